"""The README's result tables quote the committed results files exactly (benchmarks/results/*.json)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
README_FLAT = README.replace("\n", " ")
"""The README with its lines joined, for figures quoted in prose that may wrap."""
RESULTS = ROOT / "benchmarks" / "results"


def table_rows(first_cell_pattern: str, cells: int) -> list[list[str]]:
    """Markdown rows of the README whose first cell matches, bold marks removed."""
    rows = []
    for line in README.splitlines():
        parts = [p.strip().strip("*") for p in line.strip().strip("|").split("|")]
        if len(parts) == cells and re.fullmatch(first_cell_pattern, parts[0]):
            rows.append(parts)
    return rows


def test_heldout_priors_table_matches_its_json():
    result = json.loads((RESULTS / "heldout-sr-priors.json").read_text())
    rows = table_rows("bicubic|realesrgan|compact|compact-v2", 7)
    assert [r[0] for r in rows] == ["bicubic", "realesrgan", "compact", "compact-v2"]
    for name, psnr, ssim, lpips, dists, hf, spread in rows:
        e = result[name]
        assert [psnr, ssim, lpips, dists, hf, spread] == [
            f"{e['psnr']:.2f}", f"{e['ssim']:.4f}", f"{e['lpips_alex']:.4f}", f"{e['dists']:.4f}",
            f"{e['hf_energy_ratio']:.3f}", f"{e['seed_spread'] * 255:.2f}"], name


def fmt(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def test_paper_protocol_table_matches_its_json():
    table = json.loads((RESULTS / "quality-llff-paper.json").read_text())
    assert table["protocol"] == "paper"
    rows = table_rows("fern|flower", 7)
    assert len(rows) == sum(len(s["methods"]) for s in table["scenes"].values()) == 14
    for scene, method, psnr, ssim, lpips, dists, detail in rows:
        m = table["scenes"][scene]["methods"][method]
        assert [psnr, ssim, lpips, dists, detail] == [
            fmt(m["psnr"], 3), fmt(m["ssim"], 4), fmt(m["lpips_alex"], 4), fmt(m["dists"], 4),
            fmt(m["detail_consistency"], 4)], (scene, method)


def test_small_protocol_table_matches_its_json():
    table = json.loads((RESULTS / "quality-llff-small.json").read_text())
    assert table["protocol"] == "small"
    rows = table_rows("fern|flower|horns", 8)
    assert len(rows) == sum(len(s["methods"]) for s in table["scenes"].values()) == 9
    for scene, method, psnr, ssim, lpips, lpips_vgg, dists, detail in rows:
        m = table["scenes"][scene]["methods"][method]
        assert [psnr, ssim, lpips, lpips_vgg, dists, detail] == [
            fmt(m["psnr"], 3), fmt(m["ssim"], 4), fmt(m["lpips_alex"], 4), fmt(m["lpips_vgg"], 4),
            fmt(m["dists"], 4), fmt(m["detail_consistency"], 4)], (scene, method)
    for scene, entry in table["scenes"].items():  # the margins the prose quotes
        ours, base = entry["methods"]["3dsr"], entry["methods"]["per-frame"]
        assert f"{ours['psnr'] - base['psnr']:+.3f}" in README_FLAT, scene


def test_scale_table_matches_its_json():
    runs = json.loads((RESULTS / "scale-h200.json").read_text())["runs"]
    rows = table_rows(r"(fern|flower|fox)-.*", 6)
    assert len(rows) == len(runs) == 10

    def ratio(value):
        return "n/a" if value is None else f"{value:.3f}x"

    for name, gpu, wall, vs_plain, whole, peak in rows:
        r = runs[name]
        assert [gpu, wall, vs_plain, whole, peak] == [
            "alone" if r["isolated"] else "shared", f"{r['wall_s']:.0f}", ratio(r["ratio_vs_no_diffusion"]),
            ratio(r["whole_run_ratio"]), f"{r['peak_gpu_mem_gb']:.1f}"], name
    fern_whole = runs["fern-paper-compact-isolated"]["whole_run_ratio"]
    assert f"is at it: {fern_whole:.5f}." in README_FLAT
    fox = runs["fox-x4-compact-isolated"]["metrics"]
    for method in ("3dsr", "bicubic", "per-frame"):
        assert f"{fox[method]['psnr']:.3f} dB / {fox[method]['lpips_alex']:.4f}" in README_FLAT, method


def test_artifact_write_figures_match_their_json():
    r = json.loads((RESULTS / "artifact-writes-cpu.json").read_text())
    assert (f"a step's PNGs take {r['sync_s']:.1f} s, against {r['sync_level6_one_thread_s']:.1f} s at PIL's default level "
            f"6 on one thread, and {r['mb_level1']:.1f} MB instead of {r['mb_level6']:.1f} MB; a step holds training up "
            f"{r['submit_s']:.1f} s") in README_FLAT and r["compress_level"] == 1


def test_guidance_step_figures_match_their_json():
    now = json.loads((RESULTS / "guidance-step-h200.json").read_text())["cases"]
    serial = json.loads((RESULTS / "guidance-step-h200-serial-noise.json").read_text())["cases"]
    big = json.loads((RESULTS / "guidance-step-h200-serial-noise-tile1024.json").read_text())
    for scene in ("fern", "fox"):
        assert f"{scene}: denoising {now[scene]['step1']['denoise']:.2f} s, a whole step {now[scene]['step1']['step']:.2f} s" \
            in README_FLAT, scene
    assert (f"a whole step took {serial['fern']['step1']['step']:.2f} s (fern) and {serial['fox']['step1']['step']:.2f} s "
            "(fox)") in README_FLAT
    assert big["tile_size"] == 1024 and (f"cut denoising to {big['cases']['fern']['step1']['denoise']:.2f} s (fern) and "
                                         f"{big['cases']['fox']['step1']['denoise']:.2f} s (fox)") in README_FLAT


def test_cost_prose_figures_match_the_runs_they_come_from():
    import re

    readme = " ".join(README.split())  # list items wrap with an indent
    runs = json.loads((RESULTS / "scale-h200.json").read_text())["runs"]
    slow, fast = runs["fox-x4-compact-isolated@paper-protocol-isolated-s9-png6"], runs["fox-x4-compact-isolated"]
    assert (f"its run took {slow['wall_s']:.0f} s, {slow['ratio_vs_no_diffusion']:.3f}× bicubic's (its png6 row); with "
            f"the fast encoding, {fast['wall_s']:.0f} s and {fast['ratio_vs_no_diffusion']:.3f}×") in readme

    def logged(scene: str, part: str) -> list:
        excerpt = (RESULTS / "paper-protocol-isolated-s9-png1" / scene / "log-excerpt.txt").read_text()
        return sorted(float(v) for v in re.findall(rf"{part} ([0-9.]+)s", excerpt) if float(v) > 0)

    fern, fox = logged("fern", "denoise"), logged("fox", "denoise")
    renders = logged("fern", "render") + logged("fox", "render")
    assert (f"{fern[0]:.2f}–{fern[-1]:.2f} s of denoising fern's 17 views and {fox[0]:.2f}–{fox[-1]:.2f} s for fox's 43, "
            f"plus {min(renders):.2f}–{max(renders):.2f} s of renders") in readme
