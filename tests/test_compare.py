"""scripts/compare.py end to end on tiny fern: three methods trained and scored the same way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare.py"


def test_compare_trains_and_scores_bicubic_per_frame_and_3dsr(tiny_fern: Path, tmp_path: Path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(tiny_fern), "--out", str(tmp_path), "--backend", "tiny-random",
         "--warmup-iters", "8", "--denoise-steps", "2", "--phase-iters", "4", "--crop", "48"],
        capture_output=True, text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1"), timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    scores = json.loads((tmp_path / "compare.json").read_text())
    assert list(scores) == ["bicubic", "per-frame", "3dsr"]
    for mean in scores.values():
        assert 5 < mean["psnr"] < 50 and 0 <= mean["ssim"] <= 1 and mean["lpips"] is None  # no weights offline
        assert mean["sr_target_disagreement"] >= 0
    # bicubic targets are the smooth upsampled LR; random-weight SR is noise: far less consistent across views
    assert scores["per-frame"]["sr_target_disagreement"] > 2 * scores["bicubic"]["sr_target_disagreement"]
    table = (tmp_path / "compare.md").read_text()
    assert all(f"| {m} |" in table for m in scores)
    assert Image.open(tmp_path / "crops.png").size == (4 * 48, 48 + 16)  # GT + three renders
