"""The held-out table of SR priors (threedsr_ns.sr_prior.compare_priors) on a real held-out photo of sr_train."""

from __future__ import annotations

from pathlib import Path

import pytest

from threedsr_ns.backends import make_backend
from threedsr_ns.sr_prior.compare_priors import KEYS, PriorsConfig, compare_priors

SR_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "sr_train"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_table_of_one_real_photo_scores_every_method_and_links_only_a_written_figure(tmp_path: Path) -> None:
    if not SR_TRAIN.exists():
        pytest.skip(f"{SR_TRAIN} not found: this test reads a real photo from ../shared/data/sr_train")
    methods = ("bicubic", "compact")
    backends = {name: make_backend(name, device="cpu", seed=0) for name in methods}
    out = tmp_path / "priors"
    cfg = PriorsConfig(data=SR_TRAIN, out=out, methods=methods, seeds=2, limit=1, figure_photos=0, device="cpu")
    result = compare_priors(cfg, backends)

    assert result["meta"]["num_photos"] == 1 and result["meta"]["seeds"] == 2
    for name in methods:
        assert set(KEYS) <= set(result[name]) and len(result["photos"][name]) == 1
        assert result[name]["psnr"] > 15.0  # a x4 SR of a real photo, not noise
    assert result["bicubic"]["seed_spread"] == 0.0  # deterministic: one sample
    assert result["compact"]["seed_spread"] > 0.5 / 255  # two seeds of the diffusion prior differ in detail
    assert result["compact"]["hf_energy_ratio"] > 2 * result["bicubic"]["hf_energy_ratio"]  # bicubic is the blur
    text = out.with_suffix(".md").read_text()
    assert "| compact |" in text and "| bicubic |" in text
    assert "![crops]" not in text and not Path(f"{out}-crops.png").exists()  # --figure-photos 0: no dangling link
