"""scripts/benchmark.py's kernel profile: a real (tiny) no-diffusion run, profiled over HR iterations."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def test_the_kernel_profile_times_hr_iterations_of_a_real_run(tiny_fern: Path, tmp_path: Path, monkeypatch,
                                                                one_torch_thread):
    benchmark = load_script(SCRIPT, "benchmark_script", monkeypatch)
    result = benchmark.run("no-diffusion", tiny_fern, tmp_path, warmup=6, steps=1, phase=8, splatfacto_iters=1,
                           kernel_profile=(2, 4))
    profile = result["kernel_profile"]
    assert profile["steps"] == [8, 12] and profile["iterations"] == 4
    # HR iterations here render 128x96 through the CPU rasterizer: its ops must be there, and what is reported
    # per iteration must add up (shares of the busy time, each below the wall time of an iteration)
    assert profile["timed_on"] == "cpu"
    names = [row["name"] for row in profile["top"]]
    assert any(name.startswith("aten::") for name in names)
    assert 0 < profile["busy_ms_per_iteration"] and 0 < profile["wall_ms_per_iteration"]
    shares = [row["share"] for row in profile["top"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    assert all(row["ms_per_iteration"] <= profile["busy_ms_per_iteration"] + 1e-9 for row in profile["top"])
    table = (tmp_path / "no-diffusion.kernels.md").read_text()
    assert f"| `{names[0]}` |" in table and "Steps 8-11" in table


def test_a_kernel_profile_past_the_end_of_the_run_says_so(tiny_fern: Path, tmp_path: Path, monkeypatch,
                                                          one_torch_thread):
    benchmark = load_script(SCRIPT, "benchmark_script", monkeypatch)
    with pytest.raises(SystemExit, match="the run ended before step 17"):
        benchmark.run("no-diffusion", tiny_fern, tmp_path, warmup=4, steps=1, phase=4, splatfacto_iters=1,
                      kernel_profile=(10, 4))
