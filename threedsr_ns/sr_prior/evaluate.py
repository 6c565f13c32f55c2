"""The held-out check of an SR prior: bicubic vs the prior on sr_train's 58 held-out photos.

Per photo: GT = the photo centre-cropped to a multiple of s; LR = antialiased bicubic /s of the GT,
8-bit quantised (as in training and as an LR image on disk); bicubic = bicubic x s of the LR; prior = the
chosen sampler(s) (`sampling.SamplerSpec`; default 3DSR's K=4 DDPM sampler from the noised bicubic, with the
pipeline's wavelet colour fix), one sample per seed (seed i draws with torch.Generator("cpu").manual_seed(
base + i) for every photo). Metrics (`metrics.py`): PSNR and SSIM against GT (the prior's: mean over seeds),
the high-frequency energy ratio against GT, the spread across seeds.

Writes <out>/heldout.json (definitions, per-photo values, means), <out>/heldout.md (the table) and
<out>/crops.png (LR | bicubic | seed 1 | seed 2 | GT for a few photos), and with --update-card the
held-out section of the model folder's MODEL_CARD.md.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from threedsr_ns.backends.base import SRBackend
from threedsr_ns.backends.compact import CARD_FILE, PACKAGE_WEIGHTS_DIR, CompactSRBackend, count_parameters
from threedsr_ns.colorfix import bicubic_upsample
from threedsr_ns.losses import downsample_antialiased
from threedsr_ns.sr_prior import data as data_lib
from threedsr_ns.sr_prior import metrics
from threedsr_ns.sr_prior.sampling import SamplerSpec, sample_sr

TARGET_MAX_PSNR_DROP_DB = 1.0
"""Issue target: the prior's samples may fall at most this far below bicubic in PSNR."""


@dataclass
class EvalConfig:
    model: Path = PACKAGE_WEIGHTS_DIR
    """A compact-prior folder (config.json + model.safetensors); default the package's."""
    data: Path = Path("../shared/data/sr_train")
    """An sr_train folder (its held-out photos are read) or a pack of the heldout split."""
    out: Path = Path("eval_sr_prior")
    seeds: int = 2
    seed: int = 0
    """Seed i of --seeds uses torch.Generator("cpu").manual_seed(seed + i)."""
    samplers: tuple[str, ...] = ("ddpm:4",)
    """kind:steps[:start[:t1]]: "ddpm:4" is 3DSR's K-step sampler from the noised bicubic; e.g. "ddpm:50:noise" or
    "ddim:50" for a plain full sampler."""
    color_fix: bool = True
    """Apply the pipeline's wavelet colour fix to the prior's samples (3DSR does)."""
    limit: Optional[int] = None
    """Only the first N held-out photos (smoke runs; the reported table uses all)."""
    figure_photos: int = 4
    """Photos in the crops figure (the first N held-out ones)."""
    figure_crop: int = 96
    """HR side of each crop in the figure (shown at 2x)."""
    device: Optional[str] = None
    precision: Literal["auto", "fp32", "fp16"] = "auto"
    """auto: float16 on CUDA, float32 on the CPU."""
    update_card: bool = False
    """Write the held-out table into <model>/MODEL_CARD.md."""


@dataclass
class PhotoResult:
    name: str
    size: tuple[int, int]
    bicubic: dict = field(default_factory=dict)
    prior: dict = field(default_factory=dict)
    """sampler label -> {"psnr": [per seed], "ssim": [...], "hf_ratio": [...], "hf_ratio_half": [...], "spread": x}"""


def heldout_pair(pixels: np.ndarray, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(GT [1, 3, H, W], LR [1, 3, H/s, W/s]) in [0, 1] from an HxWx3 uint8 photo."""
    gt = torch.from_numpy(data_lib.crop_to_multiple(pixels, scale)).permute(2, 0, 1)[None].float() / 255.0
    height, width = gt.shape[-2:]
    lr = downsample_antialiased(gt, (height // scale, width // scale)).clamp(0.0, 1.0)
    return gt, (lr * 255.0).round() / 255.0


def _image_metrics(image: torch.Tensor, gt: torch.Tensor, scale: int) -> dict[str, float]:
    return {
        "psnr": metrics.psnr(image, gt),
        "ssim": metrics.ssim(image, gt),
        "hf_ratio": metrics.hf_energy_ratio(image, gt, scale),
        "hf_ratio_half": metrics.hf_energy_ratio(image, gt, scale, fraction=0.5),
    }


def _texture_window(gt: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left corner of the size x size window with the most GT gradient energy (chosen on GT alone)."""
    y = metrics.luminance(gt)
    energy = (y[1:, :-1] - y[:-1, :-1]).abs() + (y[:-1, 1:] - y[:-1, :-1]).abs()
    pooled = torch.nn.functional.avg_pool2d(energy[None, None], size - 1, stride=max(1, size // 4))[0, 0]
    index = int(torch.argmax(pooled))
    row, col = divmod(index, pooled.shape[1])
    stride = max(1, size // 4)
    return min(row * stride, gt.shape[1] - size), min(col * stride, gt.shape[2] - size)


def _tile(image: torch.Tensor, top: int, left: int, size: int, zoom: int) -> Image.Image:
    crop = image[:, top : top + size, left : left + size].clamp(0, 1)
    array = (crop.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array).resize((size * zoom, size * zoom), Image.NEAREST)


def crops_figure(rows: list[dict], path: Path, crop: int, zoom: int = 2) -> Path:
    """rows: {"name", "lr", "bicubic", "samples" [>= 2], "gt"} (tensors [3, H, W]); LR is shown nearest-upsampled."""
    labels = ["LR (nearest)", "bicubic", "prior seed 1", "prior seed 2", "GT"]
    tile, pad, header = crop * zoom, 6, 22
    width = len(labels) * (tile + pad) + pad
    height = header + len(rows) * (tile + pad + 14) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(labels):
        draw.text((pad + j * (tile + pad), 5), label, fill="black")
    for i, row in enumerate(rows):
        gt = row["gt"]
        top, left = _texture_window(gt, crop)
        scale = gt.shape[1] // row["lr"].shape[1]
        lr_nearest = torch.nn.functional.interpolate(row["lr"][None], scale_factor=scale, mode="nearest")[0]
        samples = list(row["samples"]) + [row["samples"][-1]] * max(0, 2 - len(row["samples"]))
        images = [lr_nearest, row["bicubic"], samples[0], samples[1], gt]
        y = header + i * (tile + pad + 14)
        draw.text((pad, y), f"{row['name']}  (HR crop at x={left}, y={top}, {crop} px, shown x{zoom})", fill="black")
        for j, image in enumerate(images):
            canvas.paste(_tile(image, top, left, crop, zoom), (pad + j * (tile + pad), y + 14))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _mean(values: list[float]) -> float:
    return float(statistics.fmean(values)) if values else float("nan")


def summarize(photos: list[PhotoResult], labels: list[str]) -> dict:
    summary = {"bicubic": {k: _mean([p.bicubic[k] for p in photos]) for k in ("psnr", "ssim", "hf_ratio", "hf_ratio_half")}}
    summary["bicubic"]["spread"] = 0.0
    for label in labels:
        entry = {k: _mean([_mean(p.prior[label][k]) for p in photos]) for k in ("psnr", "ssim", "hf_ratio", "hf_ratio_half")}
        spreads = [p.prior[label]["spread"] for p in photos if p.prior[label].get("spread") is not None]
        entry["spread"] = _mean(spreads) if spreads else None
        entry["psnr_drop_vs_bicubic_db"] = summary["bicubic"]["psnr"] - entry["psnr"]
        entry["meets_target"] = bool(
            entry["hf_ratio"] > summary["bicubic"]["hf_ratio"]
            and entry["psnr_drop_vs_bicubic_db"] <= TARGET_MAX_PSNR_DROP_DB
        )
        summary[label] = entry
    return summary


def markdown_table(result: dict) -> str:
    seeds, summary = result["seeds"], result["summary"]
    lines = [
        f"Held-out check: {result['num_photos']} held-out photos of sr_train (never trained on), x{result['scale']}; "
        f"LR = antialiased bicubic /{result['scale']} of the GT, 8-bit. Prior: {result['model_label']}, "
        f"mean of {seeds} seed(s), colour fix {'on' if result['color_fix'] else 'off'}.",
        "",
        "| method | PSNR (dB) | SSIM | HF energy ratio | HF ratio (> LR Nyquist / 2) | seed spread (/255) |",
        "|---|---|---|---|---|---|",
    ]

    def row(name: str, entry: dict) -> str:
        spread = "n/a" if entry.get("spread") is None else f"{entry['spread'] * 255:.2f}"
        return (f"| {name} | {entry['psnr']:.2f} | {entry['ssim']:.4f} | {entry['hf_ratio']:.3f} | "
                f"{entry['hf_ratio_half']:.3f} | {spread} |")

    lines.append(row("bicubic", summary["bicubic"]))
    for label in result["samplers"]:
        name = f"prior, {label}" + (" (3DSR's K-step sampler)" if label.startswith("ddpm:4:noised_lr") else "")
        lines.append(row(name, summary[label]))
    lines += [
        "",
        "HF energy ratio: spectral energy of the luminance above the LR Nyquist frequency (0.125 cycles/px at x4) up to "
        "the HR Nyquist, Hann-windowed, divided by the GT's; 1 = as much fine detail as the GT. Seed spread: per-pixel "
        "std across seeds, averaged. Target (issue 6): the prior beats bicubic on HF energy and stays within "
        f"{TARGET_MAX_PSNR_DROP_DB:g} dB of its PSNR.",
    ]
    for label in result["samplers"]:
        entry = summary[label]
        verdict = "met" if entry["meets_target"] else "NOT met"
        lines.append(f"- {label}: target {verdict} (HF ratio {entry['hf_ratio']:.3f} vs bicubic "
                     f"{summary['bicubic']['hf_ratio']:.3f}; PSNR bicubic - prior = {entry['psnr_drop_vs_bicubic_db']:+.2f} dB).")
    return "\n".join(lines) + "\n"


def load_backend(cfg: EvalConfig) -> CompactSRBackend:
    device = torch.device(cfg.device) if cfg.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"auto": None, "fp32": torch.float32, "fp16": torch.float16}[cfg.precision]
    return CompactSRBackend.from_folder(cfg.model, device, dtype, batch_size=1, seed=cfg.seed)


def evaluate(cfg: EvalConfig, backend: Optional[SRBackend] = None) -> dict:
    """Run the held-out check; returns (and writes) the result dict."""
    start = time.monotonic()
    backend = backend or load_backend(cfg)
    scale = backend.scale
    specs = [SamplerSpec.parse(text) for text in cfg.samplers]
    labels = [spec.label for spec in specs]
    description, photos = data_lib.load_photos(cfg.data, "heldout", limit=cfg.limit)
    results: list[PhotoResult] = []
    figure_rows: list[dict] = []
    device = backend.device
    for photo in photos:
        gt, lr = heldout_pair(photo.pixels, scale)
        gt, lr = gt.to(device), lr.to(device)
        bicubic = bicubic_upsample(lr, scale)
        result = PhotoResult(photo.name, tuple(gt.shape[-2:]), bicubic=_image_metrics(bicubic[0], gt[0], scale))
        for n, (spec, label) in enumerate(zip(specs, labels)):
            samples = torch.cat([
                sample_sr(backend, lr, spec, torch.Generator("cpu").manual_seed(cfg.seed + i), cfg.color_fix, scale)
                for i in range(cfg.seeds)
            ])
            per_seed = [_image_metrics(s, gt[0], scale) for s in samples]
            entry = {k: [m[k] for m in per_seed] for k in per_seed[0]}
            entry["spread"] = metrics.seed_spread(samples) if cfg.seeds >= 2 else None
            result.prior[label] = entry
            if n == 0 and len(figure_rows) < cfg.figure_photos:
                figure_rows.append({"name": photo.name, "lr": lr[0].cpu(), "bicubic": bicubic[0].cpu(),
                                    "samples": samples.cpu(), "gt": gt[0].cpu()})
        results.append(result)
    unet = getattr(backend, "unet", None)
    result = {
        "what": "held-out check of the compact x4 SR prior (threedsr_ns.sr_prior.evaluate)",
        "model": str(cfg.model),
        "model_label": f"{getattr(backend, 'source', '') or backend.name}"
        + (f" ({count_parameters(unet):,} parameters)" if unet is not None else ""),
        "data": {k: v for k, v in description.items() if k != "names"},
        "num_photos": len(results),
        "scale": scale,
        "seeds": cfg.seeds,
        "seed_base": cfg.seed,
        "samplers": labels,
        "color_fix": cfg.color_fix,
        "device": str(device),
        "definitions": {
            "gt": f"photo centre-cropped to a multiple of {scale}",
            "lr": f"threedsr_ns.losses.downsample_antialiased(gt, /{scale}), clamped, 8-bit quantised",
            "psnr_ssim": "PSNR (data range 1) and SSIM (pytorch_msssim, 11x11 Gaussian) vs GT; prior: mean over seeds",
            "hf_ratio": f"band energy of the Hann-windowed luminance spectrum for {metrics.hf_cutoff(scale):.4f} < f <= 0.5 "
            "cycles/px (above the LR Nyquist), SR / GT",
            "hf_ratio_half": f"the same above {metrics.hf_cutoff(scale, 0.5):.4f} cycles/px (half the LR Nyquist)",
            "spread": "mean over pixels of the std across seeds (ddof 0), in [0, 1] units",
        },
        "summary": summarize(results, labels),
        "photos": [asdict(r) for r in results],
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "wall_s": time.monotonic() - start,
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heldout.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown_table(result)
    (out / "heldout.md").write_text(table + "\n![crops](crops.png)\n")
    if figure_rows:
        crop = min(cfg.figure_crop, *(min(r["gt"].shape[-2:]) for r in figure_rows))
        crops_figure(figure_rows, out / "crops.png", crop)
    if cfg.update_card:
        from threedsr_ns.sr_prior.train import replace_heldout_section

        replace_heldout_section(Path(cfg.model) / CARD_FILE, table)
    return result
