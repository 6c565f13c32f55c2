"""scripts/benchmark_guidance.py: one sampler step of the shipped compact prior, timed part by part (CPU, tiny)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_guidance.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", *args], capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_each_case_gets_both_steps_timed_part_by_part(tmp_path: Path):
    out = tmp_path / "guidance.json"
    result = run("--case", "small=3x40x36", "wide=2x40x16", "--repeats", "1", "--tile-size", "128",
                 "--tile-overlap", "16", "--channels-last", "True", "--predraw-noise", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads(out.read_text())
    assert table["backend"] == "compact" and table["timesteps"] == [999, 749, 499, 249]
    assert (table["tile_size"], table["tile_overlap"]) == (128, 16)  # 160x144 and 160x64: several tiles each
    assert table["channels_last"] is True and table["predraw_noise"] is True  # asked for: both off by default
    assert table["cases"]["small"]["sr_size"] == [160, 144] and table["cases"]["wide"]["views"] == 2
    for case in table["cases"].values():
        for step in ("step1", "step2"):
            parts = case[step]
            assert set(parts) == {"encode", "noise", "denoise", "decode", "step"}
            assert 0 < parts["denoise"] and sum(v for k, v in parts.items() if k != "step") <= parts["step"]


def test_a_malformed_case_or_an_untiled_backend_is_one_line():
    result = run("--case", "fern=17x504")
    assert result.returncode != 0 and "NAME=VIEWSxWIDTHxHEIGHT" in result.stderr.strip().splitlines()[-1]
    result = run("--backend", "bicubic", "--tile-size", "64", "--case", "t=1x8x8")
    assert result.returncode != 0 and "bicubic backend does not tile" in result.stderr.strip().splitlines()[-1]


def test_tile_size_reaches_the_sd_x4_vae_tiles(tmp_path: Path):
    """--tile-size means what --pipeline.sr-tile-size means: for the SD x4 architecture, its VAE tiles."""
    out = tmp_path / "sd.json"
    result = run("--backend", "tiny-random", "--case", "t=2x24x20", "--repeats", "1", "--tile-size", "32",
                 "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads(out.read_text())
    assert table["backend"] == "tiny-random" and table["tile_size"] == 32  # the default (256) would not tile 96x80
    assert table["tile_overlap"] is None and table["cases"]["t"]["step2"]["decode"] > 0
    assert table["vae_dtype"] == "float32"  # the backend's default
    result = run("--backend", "tiny-random", "--case", "t=1x24x20", "--repeats", "1", "--vae-dtype", "bfloat16",
                 "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(out.read_text())["vae_dtype"] == "bfloat16"
    result = run("--backend", "bicubic", "--vae-dtype", "bfloat16", "--case", "t=1x8x8")
    assert result.returncode != 0 and "bicubic backend has no VAE" in result.stderr.strip().splitlines()[-1]
    result = run("--backend", "tiny-random", "--tile-overlap", "8", "--case", "t=1x8x8")
    assert result.returncode != 0 and "has no denoising tiles" in result.stderr.strip().splitlines()[-1]


def test_cudnn_autotuner_is_on_only_while_the_cases_run(monkeypatch, tmp_path: Path):
    """--cudnn-benchmark: cuDNN's autotuner during the timed steps, scoped (not left set for the process)."""
    import torch

    from conftest import load_script

    module = load_script(SCRIPT, "benchmark_guidance_script", monkeypatch)
    seen = []

    def time_case(*args, **kwargs):
        seen.append(torch.backends.cudnn.benchmark)
        return {}

    monkeypatch.setattr(module, "time_case", time_case)
    before = torch.backends.cudnn.benchmark
    for flag, expected in ((["--cudnn-benchmark"], True), ([], False)):
        out = tmp_path / f"{expected}.json"
        monkeypatch.setattr(sys, "argv", ["benchmark_guidance.py", "--device", "cpu", "--backend", "bicubic",
                                          "--case", "a=1x8x8", "b=1x8x8", "--json", str(out), *flag])
        module.main()
        assert json.loads(out.read_text())["cudnn_benchmark"] is expected
        assert seen[-2:] == [expected, expected] and torch.backends.cudnn.benchmark == before
