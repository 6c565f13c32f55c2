"""The report of an evaluated run (threedsr_ns.evaluation.evaluate_run's result): metrics.json, metrics.md.

Written by scripts/evaluate.py for one run and by scripts/compare.py for each method it trains, so the same run
is never evaluated twice. No torch import here: evaluate.py --help stays fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence


def _fmt(value: Optional[float], digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def metrics_markdown(result: Dict[str, Any]) -> str:
    """The summary, test-view and train-view tables of an evaluate_run result."""
    mean, cons = result["mean"], result["consistency"]
    summary = _table(["metric", "value"], [
        ["PSNR (dB, vs GT) ↑", _fmt(mean["psnr"], 2)],
        ["SSIM (vs GT) ↑", _fmt(mean["ssim"])],
        ["LPIPS-Alex (vs GT; the paper's metric) ↓", _fmt(mean["lpips_alex"])],
        ["LPIPS-VGG (vs GT) ↓", _fmt(mean["lpips_vgg"])],
        ["DISTS (vs GT) ↓", _fmt(mean["dists"])],
        ["LPIPS-Alex as the official 3DSR code calls it ([0, 1] inputs) ↓", _fmt(mean["lpips_alex_threedsr_code"])],
        ["LR fidelity PSNR (dB, downsampled render vs LR input) ↑", _fmt(mean["lr_psnr"], 2)],
        ["test renders: HF energy / GT's (1 = as much detail as the GT)", _fmt(mean["hf_energy_ratio_render"], 3)],
        ["SR targets: detail consistency (detail correlation across views, capped by the GT's detail energy) ↑",
         _fmt(mean["detail_consistency"])],
        ["SR targets: detail correlation across views ↑", _fmt(mean["sr_target_detail_correlation"])],
        ["SR targets: HF energy / GT's", _fmt(mean["hf_energy_ratio"], 3)],
        ["GT photos: detail consistency (what real HR images score)", _fmt(mean["gt_detail_score"])],
        ["renders: detail consistency", _fmt(mean["render_detail_score"])],
        ["SR targets: raw colour disagreement (earlier tables; blur wins it) ↓", _fmt(mean["sr_target_disagreement"])],
        ["GT photos: raw colour disagreement", _fmt(mean["gt_disagreement"])],
        ["renders: raw colour disagreement", _fmt(mean["render_disagreement"])],
        ["co-visible fraction", _fmt(mean["covisible_fraction"], 3)],
    ])
    test = _table(["test view", "PSNR", "SSIM", "LPIPS-Alex", "LPIPS-VGG", "DISTS", "LR PSNR", "HF energy ratio"], [
        [v["name"], _fmt(v["psnr"], 2), _fmt(v["ssim"]), _fmt(v["lpips_alex"]), _fmt(v["lpips_vgg"]), _fmt(v["dists"]),
         _fmt(v["lr_psnr"], 2), _fmt(v["hf_energy_ratio"], 3)]
        for v in result["test_views"]])
    train = _table(["train view", "SR-target detail score", "GT detail score", "SR-target disagreement",
                    "GT disagreement", "render disagreement", "co-visible"], [
        [v["name"], _fmt(v["sr_target_detail_score"]), _fmt(v["gt_detail_score"]),
         _fmt(v["sr_target_disagreement"]), _fmt(v["gt_disagreement"]), _fmt(v["render_disagreement"]),
         _fmt(v["covisible"], 3)]
        for v in result["train_views"]])
    w, h = result["render_size"]
    notes = "".join(f"\n- {note}" for note in result["metric_notes"])
    return (
        f"# 3dsr evaluation\n\nrun `{result['config']}` (step {result['step']}, denoising steps done: "
        f"{result['denoise_steps_done']}), data `{result['data']}` ({result['protocol']} protocol), renders {w}x{h} "
        f"(x{result['upscale_factor']}).{notes}\n\n{summary}\n\n"
        f"Detail consistency: each train view's detail band (SR target minus bicubic LR) against its {cons['neighbours']} "
        f"nearest views', warped with {cons['geometry']}{'; ' + cons['detail_note'] if cons['detail_note'] else ''}. Raw disagreement: "
        f"warped with the run's own depth. Co-visible = in front, inside the image, depth within "
        f"{cons['depth_tolerance']:.0%}, accumulation > {cons['min_accumulation']}.\n\n{test}\n\n{train}\n"
    )


def _json_ready(value: Any) -> Any:
    """NaN / inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def write_report(result: Dict[str, Any], out: Path) -> str:
    """<out>/metrics.json (every figure, per view; NaN written as null) and <out>/metrics.md; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(_json_ready(result), indent=2, allow_nan=False))
    markdown = metrics_markdown(result)
    (out / "metrics.md").write_text(markdown)
    return markdown
