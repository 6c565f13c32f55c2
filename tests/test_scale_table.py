"""scripts/scale_table.py: issue 14's cost table from compare.py folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "scale_table.py"


def compare_folder(folder: Path, methods: dict, warmup_s: float = 60.0) -> Path:
    folder.mkdir(parents=True)
    (folder / "compare.json").write_text(json.dumps({
        "protocol": "paper", "render_size": [2016, 1512], "backend": "compact", "schedule": {"N0": 50, "K": 4, "M": 10},
        "warmup": {"wall_s": warmup_s, "peak_gpu_mem_gb": 0.2}, "methods": methods}))
    return folder


def method(psnr: float, wall_s: float, **pace) -> dict:
    return {"psnr": psnr, "lpips_alex": 0.3, "wall_s": wall_s, "peak_gpu_mem_gb": 9.0, **pace}


def test_ratios_and_every_fox_run_of_a_method_are_kept(tmp_path: Path):
    fern = compare_folder(tmp_path / "alone" / "fern", {"bicubic": method(23.0, 200.0), "3dsr": method(23.3, 230.0)})
    fox = compare_folder(tmp_path / "alone" / "fox", {"bicubic": method(28.2, 259.0, gaussians=1000, ms_per_iteration=21.5),
                                                      "3dsr": method(28.3, 317.0, gaussians=1200, ms_per_iteration=23.0)})
    later = compare_folder(tmp_path / "later" / "fox", {"per-frame": method(27.5, 366.0)}, warmup_s=68.0)
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"_about": "an earlier run", "per-frame": {"mean": {"psnr": 28.1, "lpips_alex": 0.39}},
                                   "3dsr": {"mean": {"psnr": 28.17, "lpips_alex": 0.393}}}))
    out = tmp_path / "scale"
    result = subprocess.run([sys.executable, str(SCRIPT), "--llff", str(fern), "--fox", str(fox), "--fox-runs", str(later),
                             "--fox-scores", str(earlier), "--isolated", str(fern), str(fox), str(later), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert set(runs) == {"fern-paper-compact-isolated", "fox-x4-compact-isolated"}
    fern_run = runs["fern-paper-compact-isolated"]
    assert abs(fern_run["ratio_vs_no_diffusion"] - 230 / 200) < 1e-9
    assert abs(fern_run["whole_run_ratio"] - (60 + 230) / (60 + 200)) < 1e-9  # the shared warm-up counted in both
    # each method's pace where compare.json has it (runs since 40babb6), None where it does not
    assert runs["fox-x4-compact-isolated"]["per_method"] == {
        "bicubic": {"wall_s": 259.0, "peak_gpu_mem_gb": 9.0, "gaussians": 1000, "ms_per_iteration": 21.5},
        "3dsr": {"wall_s": 317.0, "peak_gpu_mem_gb": 9.0, "gaussians": 1200, "ms_per_iteration": 23.0}}
    assert fern_run["per_method"]["3dsr"] == {"wall_s": 230.0, "peak_gpu_mem_gb": 9.0, "gaussians": None,
                                              "ms_per_iteration": None}
    metrics = runs["fox-x4-compact-isolated"]["metrics"]
    assert list(metrics) == ["bicubic", "3dsr", "per-frame"]
    # per-frame: the later run alone first, the earlier one kept beside it; 3dsr's earlier run kept too
    assert (metrics["per-frame"]["psnr"], metrics["per-frame"]["wall_s"], metrics["per-frame"]["isolated"]) == (27.5, 366.0, True)
    assert [(r["psnr"], r["wall_s"], r["source"]) for r in metrics["per-frame"]["other_runs"]] == [(28.1, None, str(earlier))]
    assert [r["psnr"] for r in metrics["3dsr"]["other_runs"]] == [28.17] and metrics["bicubic"]["other_runs"] == []
    table = out.with_suffix(".md").read_text()
    assert "| per-frame | 27.500 |" in table and "| per-frame (another run) | 28.100 |" in table
    assert "| fern-paper-compact-isolated | 2016x1512 | N0=50, K=4, M=10 | alone | 230 | 1.150x | 1.115x | 9.0 |" in table


def test_a_scene_measured_again_gets_a_row_of_its_own_named_after_its_folder(tmp_path: Path):
    fern = compare_folder(tmp_path / "alone" / "fern", {"bicubic": method(23.0, 200.0), "3dsr": method(23.3, 230.0)})
    fern2 = compare_folder(tmp_path / "newer" / "fern", {"bicubic": method(23.1, 100.0), "3dsr": method(23.2, 120.0)})
    fox = compare_folder(tmp_path / "newer" / "fox", {"bicubic": method(28.1, 150.0), "3dsr": method(28.4, 180.0)})
    fox_old = compare_folder(tmp_path / "alone" / "fox", {"bicubic": method(28.2, 259.0), "3dsr": method(28.3, 317.0)})
    out = tmp_path / "scale"
    result = subprocess.run([sys.executable, str(SCRIPT), "--llff", str(fern), str(fern2), "--fox", str(fox), str(fox_old),
                             "--isolated", str(fern), str(fern2), str(fox), str(fox_old), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert list(runs) == ["fern-paper-compact-isolated", "fern-paper-compact-isolated@newer",
                          "fox-x4-compact-isolated", "fox-x4-compact-isolated@alone"]
    assert abs(runs["fern-paper-compact-isolated@newer"]["ratio_vs_no_diffusion"] - 1.2) < 1e-9
    assert abs(runs["fox-x4-compact-isolated@alone"]["ratio_vs_no_diffusion"] - 317 / 259) < 1e-9
    metrics = runs["fox-x4-compact-isolated"]["metrics"]  # the first fox folder heads the quality table
    assert metrics["3dsr"]["psnr"] == 28.4 and [r["psnr"] for r in metrics["3dsr"]["other_runs"]] == [28.3]
    assert "metrics" not in runs["fox-x4-compact-isolated@alone"]


def test_a_run_without_a_valid_baseline_gets_no_ratio(tmp_path: Path):
    """--no-baseline: a bicubic run that shared the GPU (2026-12-04's, beside a worker left running) gives no ratio,
    though its own figures stay listed; the other runs keep theirs."""
    fern = compare_folder(tmp_path / "alone" / "fern", {"bicubic": method(23.0, 200.0), "3dsr": method(23.3, 230.0)})
    shared = compare_folder(tmp_path / "shared" / "fern", {"bicubic": method(22.9, 421.0), "3dsr": method(21.1, 344.0)})
    out = tmp_path / "scale"
    result = subprocess.run([sys.executable, str(SCRIPT), "--llff", str(fern), str(shared), "--isolated", str(fern),
                             str(shared), "--no-baseline", str(shared), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    bad, good = runs["fern-paper-compact-isolated@shared"], runs["fern-paper-compact-isolated"]
    assert (bad["ratio_vs_no_diffusion"], bad["whole_run_ratio"], bad["baseline_valid"]) == (None, None, False)
    assert bad["per_method"]["bicubic"]["wall_s"] == 421.0 and bad["wall_s"] == 344.0
    assert good["baseline_valid"] and abs(good["ratio_vs_no_diffusion"] - 230 / 200) < 1e-9
    assert ("| fern-paper-compact-isolated@shared | 2016x1512 | N0=50, K=4, M=10 | alone | 344 | n/a | n/a | 9.0 |"
            in out.with_suffix(".md").read_text())
