"""Multi-view consistency of the detail an SR method adds, with one geometry shared by every method of a scene.

The raw colour difference of `evaluation.multiview_consistency` rewards blur: a blurry image differs little from
its warped neighbour whatever it invents. Here only the detail the LR input cannot hold is compared:

    band_k = target_k - bicubic_up(LR_k)          ("residual": what the SR method added to bicubic)
    band_k = target_k - bicubic_up(down(target_k))  ("highpass": the target's own energy above the LR Nyquist)

For each pair (i, j), view j's band is warped into view i with the caller's depth (`evaluation.covisible_warp`,
the co-visibility test `pair_disagreement` uses too) and compared by the energy-normalised
cross-correlation over co-visible pixels (luminance, Rec. 601 as `sr_prior.metrics`, or RGB):

    ncc(i, j) = sum(a * b) / sqrt(sum(a^2) * sum(b^2))    in [-1, 1]

1: the same detail in both views; ~0: details invented independently per view. A pair where either band has no
energy (bicubic: the residual is exactly 0) scores 0, not nan: such a method invents no consistent detail. The
correlation is blind to scale: a mild blur of consistent images keeps faint but consistent residuals and can tie the
sharp images. Given the GT photos as `reference`, the headline `score` divides by the larger of each band's energy
and the GT band's energy on the same pixels,

    score(i, j) = sum(a * b) / sqrt(max(sum a^2, sum g_i^2) * max(sum b^2, sum g_j^2)),

which is the ncc for a method with at least the GT's detail, and shrinks with the detail a blur or bicubic lacks
(no reward for over-sharpening either: more energy than the GT leaves it at the ncc). `hf_energy_ratio` (spectral
energy above the LR Nyquist over the GT's) goes beside it. Luminance is the default: chroma detail is small and
mostly noise; "rgb" takes the three channels as one vector per pixel. Pairs pool weighted by co-visible pixels.

The depth is an input: pass one rendered by a checkpoint common to every method of the scene (e.g. the shared LR
warm-up), so that no run is graded with its own geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch

from threedsr_ns.colorfix import bicubic_upsample
from threedsr_ns.evaluation import (
    DEFAULT_DEPTH_TOLERANCE,
    PinholeCameras,
    _sample,
    covisible_warp,
    nearest_camera_pairs,
)
from threedsr_ns.losses import downsample_antialiased
from threedsr_ns.sr_prior import metrics

BandMode = Literal["residual", "highpass"]
Channels = Literal["luminance", "rgb"]

ZERO_ENERGY = 1e-10
"""Mean squared band value (per pixel and channel) below which a band counts as empty: its correlation is 0. Far
below 8-bit quantisation noise ((1/255)^2 / 12 = 1.3e-6), so any stored image that differs from bicubic counts."""


def _check_images(images: torch.Tensor, name: str) -> None:
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"detail_consistency: {name} must be [N, H, W, 3], got shape {tuple(images.shape)}")


def _scale_of(images: torch.Tensor, lr_images: torch.Tensor) -> int:
    (n, H, W), (m, h, w) = images.shape[:3], lr_images.shape[:3]
    if n != m:
        raise ValueError(f"detail_consistency: {n} images but {m} LR images")
    if H % h or W % w or H // h != W // w:
        raise ValueError(f"detail_consistency: images {W}x{H} are not an integer multiple of the LR images {w}x{h}: "
                         "pass the LR inputs the SR targets were made from")
    return H // h


def _nchw(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 3, 1, 2).float()


def _nhwc(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 2, 3, 1)


def detail_band(images: torch.Tensor, lr_images: Optional[torch.Tensor] = None, mode: BandMode = "residual",
                scale: Optional[int] = None) -> torch.Tensor:
    """The detail of images [N, H, W, 3] above what an LR image holds, [N, H, W, 3].

    "residual": images - bicubic_upsample(lr_images) (clamped, as the SR pipeline's own bicubic baseline): the
    detail the SR method added; lr_images [N, H/s, W/s, 3] with an integer s.
    "highpass": images - bicubic_upsample(downsample_antialiased(images)): the images' own energy above the LR
    Nyquist; needs no LR images, only the scale (from lr_images or `scale`).
    """
    _check_images(images, "images")
    if lr_images is not None:
        _check_images(lr_images, "lr_images")
        scale = _scale_of(images, lr_images)
    elif mode == "residual" or scale is None:
        raise ValueError(f"detail_band: mode {mode!r} needs lr_images" + ("" if mode == "residual" else " or scale"))
    hr = _nchw(images)
    if mode == "residual":
        low = _nchw(lr_images).to(hr.device)
    elif mode == "highpass":
        height, width = hr.shape[-2:]
        if height % scale or width % scale:
            raise ValueError(f"detail_band: images {width}x{height} are not a multiple of the scale {scale}")
        low = downsample_antialiased(hr, (height // scale, width // scale)).clamp(0.0, 1.0)
    else:
        raise ValueError(f"detail_band: mode must be 'residual' or 'highpass', got {mode!r}")
    return _nhwc(hr - bicubic_upsample(low, scale))


def _channels(band: torch.Tensor, channels: Channels) -> torch.Tensor:
    """[N, H, W, 3] -> [N, H, W, C]: luminance (C = 1) or RGB."""
    if channels == "luminance":
        return torch.stack([metrics.luminance(view.permute(2, 0, 1)) for view in band])[..., None]
    if channels == "rgb":
        return band
    raise ValueError(f"detail_consistency: channels must be 'luminance' or 'rgb', got {channels!r}")


def _ratio(cross: float, energy_a: float, energy_b: float, covisible: int) -> float:
    if covisible == 0:
        return float("nan")
    floor = ZERO_ENERGY * covisible
    if energy_a <= floor or energy_b <= floor:
        return 0.0
    return cross / math.sqrt(energy_a * energy_b)


@dataclass
class PairCorrelation:
    """Sums over the co-visible pixels (and channels) of view i's band a and view j's band b warped into i."""

    cross: float
    """sum of a * b."""
    energy_i: float
    """sum of a^2."""
    energy_j: float
    """sum of b^2."""
    covisible: int
    pixels: int
    """pixels of view i taking part (valid source pixels)."""
    reference_i: Optional[float] = None
    """sum of the reference band's a^2 there (the GT photos'), when given."""
    reference_j: Optional[float] = None

    @property
    def ncc(self) -> float:
        """cross / sqrt(energy_i energy_j): 0 when either band is (numerically) empty, nan when nothing is co-visible."""
        return _ratio(self.cross, self.energy_i, self.energy_j, self.covisible)

    @property
    def score(self) -> Optional[float]:
        """cross / sqrt(max(energy_i, reference_i) max(energy_j, reference_j)): the ncc while the band has at least the
        reference's energy, the consistent detail relative to the reference's when it has less (a blur, bicubic)."""
        if self.reference_i is None or self.reference_j is None:
            return None
        return _ratio(self.cross, max(self.energy_i, self.reference_i), max(self.energy_j, self.reference_j),
                      self.covisible)


def pair_correlations(bands: Sequence[torch.Tensor], depths: torch.Tensor, cams: PinholeCameras, i: int, j: int,
                      depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE, valid: Optional[torch.Tensor] = None,
                      reference_bands: Optional[torch.Tensor] = None) -> List[PairCorrelation]:
    """Warp view j of each band set [N, H, W, C] into view i with i's depth, the warp computed once for all sets;
    each set's correlation sums over the co-visible pixels (and the reference bands' energies there, when given)."""
    uv, mask, source = covisible_warp(depths, cams, i, j, depth_tolerance, valid)
    sets = list(bands) + ([] if reference_bands is None else [reference_bands])
    stacked = torch.cat([b.to(bands[0]) for b in sets], -1)
    a = stacked[i].double()[mask]
    b = _sample(stacked[j], uv).double()[mask]
    c = bands[0].shape[-1]
    reference = None
    if reference_bands is not None:
        ref = slice(len(bands) * c, (len(bands) + 1) * c)
        reference = float(a[:, ref].square().sum()), float(b[:, ref].square().sum())
    results = []
    for k in range(len(bands)):
        own = slice(k * c, (k + 1) * c)
        result = PairCorrelation(float((a[:, own] * b[:, own]).sum()), float(a[:, own].square().sum()),
                                 float(b[:, own].square().sum()), int(mask.sum()), int(source.sum()))
        if reference is not None:
            result.reference_i, result.reference_j = reference
        results.append(result)
    return results


def _pool(values: Sequence[Optional[float]], pairs: Sequence[Tuple[int, int]], results: Sequence[PairCorrelation],
          n: int) -> Tuple[float, List[float]]:
    """(co-visible-pixel-weighted mean over all pairs, per view i over its pairs); nan where nothing is co-visible."""
    sums, covis = np.zeros(n), np.zeros(n)
    for (i, _), value, r in zip(pairs, values, results):
        if r.covisible:
            sums[i] += value * r.covisible
            covis[i] += r.covisible
    with np.errstate(invalid="ignore", divide="ignore"):
        per_view = (sums / covis).tolist()
    return (float(sums.sum() / covis.sum()) if covis.sum() else float("nan")), per_view


@dataclass
class DetailConsistencyResult:
    """Correlation of the detail bands of neighbouring views (higher = more consistent, 1 = identical detail,
    ~0 = detail invented independently per view, 0 = no detail at all)."""

    correlation: float
    """Co-visible-pixel-weighted mean of the pairs' ncc (scale-free: a faint but consistent blur keeps a high one);
    nan when no pair has a co-visible pixel."""
    score: Optional[float]
    """The same mean of the pairs' reference-capped score (`PairCorrelation.score`): the headline number, which a
    blur or bicubic cannot win; None without reference images."""
    covisible_fraction: float
    pairs: List[Tuple[int, int]] = field(default_factory=list)
    per_pair: List[float] = field(default_factory=list)
    """ncc of each pair, in the order of `pairs`."""
    per_view: List[float] = field(default_factory=list)
    """correlation of view i against its neighbours; nan: nothing co-visible."""
    per_view_score: Optional[List[float]] = None
    per_view_covisible: List[float] = field(default_factory=list)
    detail_energy: List[float] = field(default_factory=list)
    """Mean squared band value per valid pixel (and channel) of each view: 0 for bicubic."""
    reference_energy: Optional[List[float]] = None
    """The same for the reference images' bands, when given."""
    energy_ratio: Optional[float] = None
    """sum of detail_energy / sum of reference_energy: how much detail, beside how consistent."""


def detail_consistency(images: torch.Tensor, lr_images: Optional[torch.Tensor], depths: torch.Tensor, cameras,
                       pairs: Optional[Sequence[Tuple[int, int]]] = None, valid: Optional[torch.Tensor] = None,
                       depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE, reference: Optional[torch.Tensor] = None,
                       mode: BandMode = "residual", channels: Channels = "luminance",
                       scale: Optional[int] = None) -> DetailConsistencyResult:
    """Detail consistency of images [N, H, W, 3] in [0, 1] (SR targets or renders) over pairs of their views.

    lr_images: [N, H/s, W/s, 3], the LR inputs (mode "residual"; "highpass" needs only `scale`).
    depths: [N, H, W] z-depths shared by every method graded together; valid: optional [N, H, W] bool.
    cameras: nerfstudio `Cameras` (perspective, undistorted) or `PinholeCameras`, at the images' size.
    pairs: (i, j) to compare; default each view's DEFAULT_NEIGHBOURS nearest views by camera centre.
    reference: optional [N, H, W, 3], the GT photos of the same views, for `score` and `energy_ratio`.
    """
    return detail_consistency_of_sets({"images": images}, lr_images, depths, cameras, pairs, valid, depth_tolerance,
                                      reference, mode, channels, scale)["images"]


def detail_consistency_of_sets(image_sets: Dict[str, Optional[torch.Tensor]], lr_images: Optional[torch.Tensor],
                               depths: torch.Tensor, cameras, pairs: Optional[Sequence[Tuple[int, int]]] = None,
                               valid: Optional[torch.Tensor] = None,
                               depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE,
                               reference: Optional[torch.Tensor] = None, mode: BandMode = "residual",
                               channels: Channels = "luminance",
                               scale: Optional[int] = None) -> Dict[str, Optional[DetailConsistencyResult]]:
    """`detail_consistency` of several image sets of the same views (e.g. SR targets, GT photos, renders), each
    [N, H, W, 3] or None (its result None): every pair's warp and the reference's band are computed once for all."""
    cams = cameras if isinstance(cameras, PinholeCameras) else PinholeCameras.from_nerfstudio(cameras)
    n, height, width = depths.shape if depths.ndim == 3 else (None, None, None)
    names = [name for name, images in image_sets.items() if images is not None]
    for name in names:
        images = image_sets[name]
        _check_images(images, "images")
        if depths.shape != images.shape[:3]:
            raise ValueError(f"detail_consistency: depths must be [N, H, W] = {tuple(images.shape[:3])}, got "
                             f"{tuple(depths.shape)}: render the shared depth at the images' size")
        if reference is not None and reference.shape != images.shape:
            raise ValueError(f"detail_consistency: reference must be {tuple(images.shape)} like the images, got "
                             f"{tuple(reference.shape)}: pass the GT photos of the same views")
    results: Dict[str, Optional[DetailConsistencyResult]] = {name: None for name in image_sets}
    if not names:
        return results
    if len(cams) != n:
        raise ValueError(f"detail_consistency: {n} images but {len(cams)} cameras")
    if (cams.width != width).any() or (cams.height != height).any():
        raise ValueError(f"detail_consistency: cameras are not all {width}x{height}, the images' size: rescale them first")
    if valid is not None and valid.shape != depths.shape:
        raise ValueError(f"detail_consistency: valid must be [N, H, W] = {tuple(depths.shape)}, got {tuple(valid.shape)}")
    pairs = [(int(i), int(j)) for i, j in pairs] if pairs is not None else nearest_camera_pairs(cams.centres)
    bands = [_channels(detail_band(image_sets[name], lr_images, mode, scale), channels) for name in names]
    ref_bands = None if reference is None else _channels(detail_band(reference, lr_images, mode, scale), channels)
    per_pair = [pair_correlations(bands, depths, cams, i, j, depth_tolerance, valid, ref_bands) for i, j in pairs]
    mask = torch.ones(depths.shape, dtype=torch.bool, device=depths.device) if valid is None else valid.bool().to(depths.device)

    def energies(b: torch.Tensor) -> List[float]:
        return [float(b[k].double()[mask[k]].square().mean()) if mask[k].any() else float("nan") for k in range(n)]

    reference_energy = None if ref_bands is None else energies(ref_bands)
    for index, name in enumerate(names):
        pair_results = [pair[index] for pair in per_pair]
        results[name] = _result(pair_results, pairs, n, energies(bands[index]), reference_energy)
    return results


def _result(results: List[PairCorrelation], pairs: List[Tuple[int, int]], n: int, detail_energy: List[float],
            reference_energy: Optional[List[float]]) -> DetailConsistencyResult:
    correlation, per_view = _pool([r.ncc for r in results], pairs, results, n)
    covis, pixels = np.zeros(n), np.zeros(n)
    for (i, _), r in zip(pairs, results):
        covis[i] += r.covisible
        pixels[i] += r.pixels
    with np.errstate(invalid="ignore", divide="ignore"):
        per_view_covisible = (covis / pixels).tolist()
    result = DetailConsistencyResult(
        correlation=correlation, score=None,
        covisible_fraction=float(covis.sum() / pixels.sum()) if pixels.sum() else 0.0,
        pairs=pairs, per_pair=[r.ncc for r in results], per_view=per_view, per_view_covisible=per_view_covisible,
        detail_energy=detail_energy,
    )
    if reference_energy is not None:
        result.score, result.per_view_score = _pool([r.score for r in results], pairs, results, n)
        result.reference_energy = reference_energy
        ref_total = float(np.nansum(reference_energy))
        result.energy_ratio = float(np.nansum(detail_energy)) / ref_total if ref_total > 0 else float("nan")
    return result


@dataclass
class HFEnergyRatio:
    ratio: float
    """sum over views of the band energy above the LR Nyquist / the reference's (1: as much detail as the GT;
    bicubic and blur far below 1, noise or over-sharpening above)."""
    per_view: List[float] = field(default_factory=list)


def hf_energy_ratio(images: torch.Tensor, reference: torch.Tensor, scale: int, fraction: float = 1.0) -> HFEnergyRatio:
    """Spectral energy of images [N, H, W, 3] above fraction x the LR Nyquist (1 / (2 scale) cycles per pixel), over
    the reference's (the GT) of the same views: `sr_prior.metrics.band_energy` (luminance, Hann window) per view."""
    _check_images(images, "images")
    _check_images(reference, "reference")
    if images.shape != reference.shape:
        raise ValueError(f"hf_energy_ratio: images {tuple(images.shape)} and reference {tuple(reference.shape)} differ")
    low = metrics.hf_cutoff(scale, fraction)
    mine = [metrics.band_energy(image.permute(2, 0, 1), low) for image in images]
    ref = [metrics.band_energy(image.permute(2, 0, 1), low) for image in reference]
    if sum(ref) <= 0:
        raise ValueError("hf_energy_ratio: the reference has no energy above the LR Nyquist: pass the GT images")
    per_view = [m / r if r > 0 else float("nan") for m, r in zip(mine, ref)]
    return HFEnergyRatio(sum(mine) / sum(ref), per_view)
