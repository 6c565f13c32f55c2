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
    lpips_row = _fmt(mean["lpips"]) if mean["lpips"] is not None else f"n/a ({result['lpips_note']})"
    summary = _table(["metric", "value"], [
        ["PSNR (dB, vs GT) ↑", _fmt(mean["psnr"], 2)],
        ["SSIM (vs GT) ↑", _fmt(mean["ssim"])],
        ["LPIPS (vs GT) ↓", lpips_row],
        ["LR fidelity PSNR (dB, downsampled render vs LR input) ↑", _fmt(mean["lr_psnr"], 2)],
        ["SR-target disagreement (mean abs colour, 0-1) ↓", _fmt(mean["sr_target_disagreement"])],
        ["GT-photo disagreement (same geometry: what real HR images score)", _fmt(mean["gt_disagreement"])],
        ["render disagreement (floor: resampling, view-dependent colour)", _fmt(mean["render_disagreement"])],
        ["co-visible fraction", _fmt(mean["covisible_fraction"], 3)],
    ])
    test = _table(["test view", "PSNR", "SSIM", "LPIPS", "LR PSNR"], [
        [v["name"], _fmt(v["psnr"], 2), _fmt(v["ssim"]), _fmt(v["lpips"]), _fmt(v["lr_psnr"], 2)]
        for v in result["test_views"]])
    train = _table(["train view", "SR-target disagreement", "GT disagreement", "render disagreement", "co-visible"], [
        [v["name"], _fmt(v["sr_target_disagreement"]), _fmt(v["gt_disagreement"]), _fmt(v["render_disagreement"]),
         _fmt(v["covisible"], 3)]
        for v in result["train_views"]])
    w, h = result["render_size"]
    return (
        f"# 3dsr evaluation\n\nrun `{result['config']}` (step {result['step']}, denoising steps done: "
        f"{result['denoise_steps_done']}), data `{result['data']}`, renders {w}x{h} (x{result['upscale_factor']}).\n\n{summary}\n\n"
        f"Consistency: each train view against its {cons['neighbours']} nearest views, warped with the run's rendered "
        f"depth; co-visible = in front, inside the image, depth within {cons['depth_tolerance']:.0%}, render "
        f"accumulation > {cons['min_accumulation']}. The score depends on the run's geometry: compare the SR targets "
        f"with the GT photos under the same geometry.\n\n{test}\n\n{train}\n"
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
