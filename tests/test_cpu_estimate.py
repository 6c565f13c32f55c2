"""Without CUDA: the line `ns-train 3dsr` prints at start-up (at least how long the run takes, and that 3dsr-preview
exists) comes from the committed CPU benchmark, and `ns-train 3dsr-preview`, the run a CPU user starts with, runs to
its end with the shipped prior, as a real subprocess."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from threedsr_ns import config as method
from threedsr_ns.pipeline import ThreeDSRPipelineConfig

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cpu-fern.json"
NS_TRAIN = str(Path(sys.executable).parent / "ns-train")


def test_the_cpu_figures_come_from_the_committed_benchmark():
    runs = json.loads(BENCHMARK.read_text())["runs"]
    pace, preview = runs["pace"], runs["preview"]
    assert pace["schedule"]["N0"] > 0 and pace["backend"] == "bicubic" and preview["backend"] == "compact"
    lr_mp, hr_mp = (area(pace[key]) for key in ("lr_size", "hr_size"))
    b = math.log(pace["hr_ms_per_iteration"] / pace["lr_ms_per_iteration"]) / math.log(hr_mp / lr_mp)
    a = pace["lr_ms_per_iteration"] / lr_mp**b
    assert method.CPU_MS_PER_ITERATION == (round(a, 1), round(b, 3))
    assert method.CPU_GUIDANCE_S_PER_VIEW_MEGAPIXEL == round(statistics.fmean(preview["guidance_s_per_view_megapixel"]), 1)
    assert method.CPU_PREVIEW_MINUTES == round(preview["wall_s"] / 60, 1)
    assert method.CPU_MIN_MS_PER_ITERATION == round(preview["lr_ms_per_iteration"], 1)
    assert preview["lr_size"] == [126, 94] and preview["hr_size"] == [504, 376]

    # on the benchmark's own scene the line gives back the paces measured there (to the constants' rounding)
    config = ThreeDSRPipelineConfig()
    line = method.cpu_time_estimate(config, tuple(reversed(pace["lr_size"])), pace["views"])
    lr_s, hr_s = (float(v) for v in re.search(r"~([\d.]+) / ([\d.]+) s an iteration", line).groups())
    assert lr_s == round(pace["lr_ms_per_iteration"] / 1e3, 1) and abs(hr_s * 1e3 / pace["hr_ms_per_iteration"] - 1) < 0.01
    hours = float(re.search(r"take at least ~(\d+) h on 2 CPU cores", line).group(1))
    floor = (30000 * pace["lr_ms_per_iteration"] + 20000 * pace["hr_ms_per_iteration"]) / 3.6e6
    assert abs(hours - floor) > 0.5 and hours > floor  # the K guidance steps come on top of the iterations
    assert f"({method.CPU_PREVIEW_MINUTES:.1f} min for LLFF fern at 126x94" in line


def test_the_readme_quotes_the_benchmark():
    runs = json.loads(BENCHMARK.read_text())["runs"]
    pace, preview = runs["pace"], runs["preview"]
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    steps = preview["guidance_s"]
    schedule = lambda run: "N0={N0}, K={K}, M={M}".format(**run["schedule"])  # noqa: E731
    assert (f"`ns-train 3dsr-preview` took {preview['wall_s'] / 60:.1f} min on LLFF fern at 126×94 → 504×376 (its "
            f"schedule {schedule(preview)}; its four guidance steps {min(steps):.0f}–{max(steps):.0f} s each), while the "
            f"default method's first iterations ({schedule(pace)}, {pace['backend']} targets) on "
            f"fern at 504×378 took {pace['lr_ms_per_iteration'] / 1e3:.1f} s at LR and "
            f"{pace['hr_ms_per_iteration'] / 1e3:.1f} s at 2016×1512: its 50,000 iterations need a month") in readme
    month = (30000 * pace["lr_ms_per_iteration"] + 20000 * pace["hr_ms_per_iteration"]) / 1e3 / 86400
    assert 28 <= month <= 35  # "a month", at the first iterations' pace


def area(size: list) -> float:
    return size[0] * size[1] / 1e6


def ns_train(*args: str, tmp_path: Path, timeout: int = 900) -> str:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty_hf_cache"))
    result = subprocess.run([NS_TRAIN, *args, "--output-dir", str(tmp_path), "--timestamp", "run", "--vis",
                             "tensorboard", "--machine.device-type", "cpu"],
                            capture_output=True, text=True, env=env, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def test_ns_train_3dsr_says_at_start_up_how_long_at_least_and_names_the_preview(tiny_fern: Path, tmp_path: Path):
    output = ns_train("3dsr", "--data", str(tiny_fern), "--pipeline.sr-backend", "bicubic", "--pipeline.warmup-iters",
                      "2", "--pipeline.denoise-steps", "1", "--pipeline.phase-iters", "1", tmp_path=tmp_path)
    # nerfstudio's console is 120 columns wide: join the record's wrapped lines, less its file:line column
    text = " ".join(re.sub(r"\s\S+\.py:\d+\s", " ", output).split())
    assert ("3dsr without CUDA: 2 iterations at 32x24, then 1 guidance steps over 17 views and 1 iterations at 128x96, "
            "take at least ~") in text
    assert "`ns-train 3dsr-preview` runs the same method on a short schedule" in text


def test_ns_train_3dsr_preview_runs_to_its_end_with_the_shipped_prior(tiny_fern: Path, tmp_path: Path):
    """The preview as a user starts it (no schedule options): the shipped compact prior's four guidance steps, and
    its final SR targets at x4 in the checkpoint; it prints no CPU warning, being the short run itself."""
    output = ns_train("3dsr-preview", "--data", str(tiny_fern), tmp_path=tmp_path)
    assert "3dsr without CUDA:" not in output
    assert "backend 'compact'" in output and "3dsr denoise step 4 done: " in output
    run = tmp_path / "fern" / "3dsr-preview" / "run"
    ckpt = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))[-1]
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["pipeline"]["_extra_state"]
    targets = state["sr_targets_uint8"]
    assert state["steps_done"] == 4 and tuple(targets.shape) == (17, 96, 128, 3)
    assert targets.float().std() > 10  # real images, not a constant fill
