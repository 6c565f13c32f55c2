"""The detail-consistency score on real multi-view images with exact geometry.

A real photo (LLFF fern, images_2) is the texture of a tilted plane seen by five pinhole cameras; each view is rendered
through the evaluation's own warp (backproject with the plane's analytic z-depth, project into the texture's camera,
sample) at 4x supersampling, then antialiased down to 128x96 and stored 8-bit: the GT views, one consistent scene.
The LR inputs are their antialiased x4 downsamples (32x24, 8-bit). Every method is graded with the same analytic depth.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from threedsr_ns import detail_consistency as dc
from threedsr_ns.backends import make_backend
from threedsr_ns.colorfix import bicubic_upsample
from threedsr_ns.evaluation import PinholeCameras, _sample, backproject, multiview_consistency, project
from threedsr_ns.losses import downsample_antialiased
from threedsr_ns.sr_prior.data import _gaussian_blur
from threedsr_ns.sr_prior.sampling import SamplerSpec, sample_sr

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TEXTURE = SHARED / "llff" / "fern" / "images_2" / "image000.jpg"
SR_TRAIN = SHARED / "sr_train" / "images"
WIDTH, HEIGHT, SCALE = 128, 96, 4
PLANE_NORMAL = torch.nn.functional.normalize(torch.tensor([0.2, 0.1, 1.0]), dim=0)
PLANE_OFFSET = float(PLANE_NORMAL @ torch.tensor([0.0, 0.0, -4.0]))  # n . X = offset, through (0, 0, -4)
CENTRES = [[0, 0, 0], [0.3, 0, 0], [-0.3, 0.05, 0], [0.05, 0.25, 0], [-0.05, -0.25, 0.1]]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _read(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)


def _look_at(centre, target) -> torch.Tensor:
    """OpenGL camera-to-world [3, 4]: looks down -z at target, y up."""
    c, t = torch.tensor(centre, dtype=torch.float32), torch.tensor(target, dtype=torch.float32)
    z = torch.nn.functional.normalize(c - t, dim=0)
    x = torch.nn.functional.normalize(torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), z), dim=0)
    return torch.cat([torch.stack([x, torch.linalg.cross(z, x), z], 1), c[:, None]], 1)


def _cameras(c2ws, width: int, height: int, fov_deg: float) -> PinholeCameras:
    n, f = len(c2ws), 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    one = torch.ones(n)
    return PinholeCameras(torch.stack(c2ws), f * one, f * one, width / 2 * one, height / 2 * one,
                          torch.full((n,), width), torch.full((n,), height))


def _plane_depth(cams: PinholeCameras, k: int) -> torch.Tensor:
    """Analytic z-depth of the plane in view k: the point at z-depth t is c + t r, with r its depth-1 point minus c."""
    centre = cams.camera_to_worlds[k][:, 3]
    rays = backproject(torch.ones(int(cams.height[k]), int(cams.width[k])), cams, k) - centre
    return (PLANE_OFFSET - PLANE_NORMAL @ centre) / (rays @ PLANE_NORMAL)


def _quantise(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round() / 255


def _down(images: torch.Tensor, size) -> torch.Tensor:
    return downsample_antialiased(images.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1)


@pytest.fixture(scope="module")
def scene():
    if not TEXTURE.is_file():
        pytest.skip(f"{TEXTURE} not found: these tests read LLFF fern from ../shared/data")
    photo = _read(TEXTURE)  # 2016x1512, 4:3
    texture = _down(photo[None], (576, 768))[0].clamp(0, 1)
    texture_cam = _cameras([_look_at([0, 0, 0], [0, 0, -1])], 768, 576, 64)
    c2ws = [_look_at(c, [0.1 * k - 0.2, 0, -4]) for k, c in enumerate(CENTRES)]
    cams, fine = _cameras(c2ws, WIDTH, HEIGHT, 50), _cameras(c2ws, 4 * WIDTH, 4 * HEIGHT, 50)
    views = []
    for k in range(len(c2ws)):
        uv, _ = project(backproject(_plane_depth(fine, k), fine, k), texture_cam, 0)
        views.append(_sample(texture, uv))
    gt = _quantise(_down(torch.stack(views), (HEIGHT, WIDTH)))
    lr = _quantise(_down(gt, (HEIGHT // SCALE, WIDTH // SCALE)))
    depth = torch.stack([_plane_depth(cams, k) for k in range(len(c2ws))])
    return {"gt": gt, "lr": lr, "depth": depth, "cams": cams}


def _bicubic(lr: torch.Tensor) -> torch.Tensor:
    return bicubic_upsample(lr.permute(0, 3, 1, 2), SCALE).permute(0, 2, 3, 1)


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    return _gaussian_blur(images.permute(0, 3, 1, 2), torch.full((images.shape[0],), sigma)).permute(0, 2, 3, 1)


def _grade(images, s, **kwargs) -> dc.DetailConsistencyResult:
    return dc.detail_consistency(images, s["lr"], s["depth"], s["cams"], reference=s["gt"], **kwargs)


def test_detail_band_is_what_the_method_added_to_bicubic(scene) -> None:
    gt, lr = scene["gt"], scene["lr"]
    band = dc.detail_band(gt, lr)
    torch.testing.assert_close(band + _bicubic(lr), gt)
    assert float(dc.detail_band(_bicubic(lr), lr).abs().max()) == 0.0
    high = dc.detail_band(gt, mode="highpass", scale=SCALE)
    assert high.shape == gt.shape and 0 < float(high.square().mean()) <= 1.5 * float(band.square().mean())
    with pytest.raises(ValueError, match="integer multiple"):
        dc.detail_band(gt, lr[:, :, :-1])
    with pytest.raises(ValueError, match="needs lr_images"):
        dc.detail_band(gt)


def test_several_sets_graded_at_once_equal_each_graded_alone(scene) -> None:
    """evaluation grades SR targets, GT and renders in one call (one warp per pair for all): each set's result must
    be what grading it alone gives, and a missing set gives None."""
    sets = {"gt": scene["gt"], "missing": None, "blur": _blur(scene["gt"], 1.0), "bicubic": _bicubic(scene["lr"])}
    together = dc.detail_consistency_of_sets(sets, scene["lr"], scene["depth"], scene["cams"], reference=scene["gt"])
    assert together["missing"] is None
    for name in ("gt", "blur", "bicubic"):
        alone = _grade(sets[name], scene)
        assert (together[name].score, together[name].correlation, together[name].per_pair) == \
            (alone.score, alone.correlation, alone.per_pair), name
    assert together["gt"].score > together["blur"].score > together["bicubic"].score


def test_consistent_gt_detail_scores_near_one(scene) -> None:
    from nerfstudio.cameras.cameras import Cameras

    cams = scene["cams"]
    ns_cameras = Cameras(camera_to_worlds=cams.camera_to_worlds, fx=cams.fx[:, None], fy=cams.fy[:, None],
                         cx=cams.cx[:, None], cy=cams.cy[:, None], width=cams.width[:, None],
                         height=cams.height[:, None])
    r = dc.detail_consistency(scene["gt"], scene["lr"], scene["depth"], ns_cameras, reference=scene["gt"])
    assert r.correlation > 0.85 and r.score == pytest.approx(r.correlation)
    assert min(r.per_view) > 0.8 and r.energy_ratio == pytest.approx(1.0)
    assert r.covisible_fraction > 0.8 and len(r.pairs) == 2 * len(cams)
    rgb = _grade(scene["gt"], scene, channels="rgb")
    assert rgb.correlation > 0.85


def test_independent_real_detail_scores_about_zero(scene) -> None:
    """Bicubic(LR) + the real detail of unrelated photos, one per view, at the GT's detail energy."""
    if not SR_TRAIN.is_dir():
        pytest.skip(f"{SR_TRAIN} not found")
    names = sorted(p for p in SR_TRAIN.iterdir() if p.suffix == ".jpg")[:5]
    patches = torch.stack([_read(p)[40 : 40 + HEIGHT, 40 : 40 + WIDTH] for p in names])
    foreign = dc.detail_band(patches, mode="highpass", scale=SCALE)
    own = dc.detail_band(scene["gt"], scene["lr"])
    invented = _quantise(_bicubic(scene["lr"]) + foreign * (own.square().mean() / foreign.square().mean()).sqrt())
    r = _grade(invented, scene)
    assert abs(r.correlation) < 0.05 and abs(r.score) < 0.05, (r.correlation, r.score)
    assert dc.hf_energy_ratio(invented, scene["gt"], SCALE).ratio > 0.5  # it has detail, just not consistent detail
    bicubic = _grade(_bicubic(scene["lr"]), scene)  # no detail at all: exactly 0, not nan
    assert bicubic.correlation == 0.0 and bicubic.score == 0.0 and max(bicubic.detail_energy) == 0.0


def test_a_blurred_copy_cannot_beat_the_sharp_consistent_one(scene) -> None:
    gt = _grade(scene["gt"], scene)
    for sigma in (0.5, 1.0):
        blurred = _grade(_blur(scene["gt"], sigma), scene)
        assert blurred.score < 0.75 * gt.score, (sigma, blurred.score, gt.score)
        assert blurred.correlation < gt.correlation + 0.01  # the scale-free ncc alone can only tie a mild blur
        assert blurred.energy_ratio < 0.75
        assert dc.hf_energy_ratio(_blur(scene["gt"], sigma), scene["gt"], SCALE).ratio < 0.7


def test_the_old_raw_colour_score_prefers_blur_and_bicubic(scene) -> None:
    """Why this module exists: the mean |dRGB| after the warp ranks the GT below its blur and below bicubic."""
    old = {name: multiview_consistency(images, scene["depth"], scene["cams"]).disagreement
           for name, images in {"gt": scene["gt"], "blur": _blur(scene["gt"], 1.0),
                                "bicubic": _bicubic(scene["lr"])}.items()}
    assert old["blur"] < old["gt"] and old["bicubic"] < old["gt"], old


def test_gt_scores_above_per_frame_hallucinations(scene) -> None:
    """The shipped compact SR prior, 3DSR's per-frame K=4 sampler, a different seed per view."""
    backend = make_backend("compact", device="cpu", batch_size=1, seed=0)
    lr = scene["lr"].permute(0, 3, 1, 2)
    sr = torch.cat([sample_sr(backend, lr[k : k + 1], SamplerSpec.parse("ddpm:4"), torch.Generator().manual_seed(10 + k))
                    for k in range(lr.shape[0])]).permute(0, 2, 3, 1)
    gt, hallucinated = _grade(scene["gt"], scene), _grade(sr, scene)
    assert hallucinated.correlation < gt.correlation - 0.15, (hallucinated.correlation, gt.correlation)
    assert hallucinated.score < gt.score - 0.3, (hallucinated.score, gt.score)
    assert 0 < dc.hf_energy_ratio(sr, scene["gt"], SCALE).ratio < 1


def test_masks_nan_and_bad_inputs(scene) -> None:
    gt, lr, depth, cams = scene["gt"], scene["lr"], scene["depth"], scene["cams"]
    valid = torch.ones(depth.shape, dtype=torch.bool)
    valid[0] = False
    r = dc.detail_consistency(gt, lr, depth, cams, valid=valid)
    assert math.isnan(r.per_view[0]) and math.isnan(r.detail_energy[0]) and r.score is None
    assert r.correlation > 0.85 and all(v > 0.8 for v in r.per_view[1:])
    occluded = depth.clone()
    occluded[1] /= 3  # view 1 sees something much nearer: none of view 0's surface is visible in it
    far = dc.detail_consistency(gt, lr, occluded, cams, pairs=[(0, 1)])
    assert math.isnan(far.correlation) and far.covisible_fraction == 0.0
    with pytest.raises(ValueError, match="depths must be"):
        dc.detail_consistency(gt, lr, depth[:, :-1], cams)
    with pytest.raises(ValueError, match="reference must be"):
        dc.detail_consistency(gt, lr, depth, cams, reference=gt[:2])
    with pytest.raises(ValueError, match="channels"):
        dc.detail_consistency(gt, lr, depth, cams, channels="yuv")
    assert dc.hf_energy_ratio(gt, gt, SCALE).ratio == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no energy"):
        dc.hf_energy_ratio(gt, torch.full_like(gt, 0.5), SCALE)
