"""The 3DSR loop: diffusion denoising steps run as a training callback between 3DGS phases.

At each phase boundary (threedsr_ns.phases) the callback runs one guidance step on the training device:

    k = 1:  x_{t1} = q_sample(E(bicubic(L)), t1)                  (or noise)
    k > 1:  R = render(train views); x_{tk} = posterior(x_{t(k-1)}, x~0 = E(R))   <- 3D consistency enters
            x0 = denoiser(x_{tk}, tk | L);  H = colour_fix(D(x0), bicubic(L));  datamanager.swap(H)

`mode` swaps the renders for each view's own previous H (the per-frame baselines; see its docstring).

then the model starts an HR phase (fresh densification, restarted learning-rate schedules). The loop's
state (steps done, latents in fp16, SR targets as uint8) is part of the pipeline's state_dict, so checkpoints
resume it. A training pipeline runs `threedsr_ns.preflight` when it is built: bad input fails before the warm-up.
When the SR targets exceed `--pipeline.datamanager.targets-on-gpu-max-gb`, the step's full-size tensors (LR,
latents, renders, SR images) are kept on the CPU and the backend moves one batch of views at a time to the GPU.
Each view's diffusion noise at step k comes from its own generator (guidance.view_generators). With
`--pipeline.guidance-devices N` > 1 the guidance steps are sharded by view over N processes (threedsr_ns.distributed:
workers on cuda:1..N-1 over NCCL, or CPU processes over gloo); 3DGS, the viewer and checkpoints stay in this one,
and the SR targets are bit-identical to N = 1's.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Literal, Optional, Tuple, Type

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE

from threedsr_ns.artifacts import ArtifactWriter, contact_sheet
from threedsr_ns.backends import make_backend
from threedsr_ns.colorfix import bicubic_upsample
from threedsr_ns.datamanager import ThreeDSRDataManager, ThreeDSRDataManagerConfig
from threedsr_ns.detail_consistency import hf_energy_ratio
from threedsr_ns.distributed import GuidanceGroup, check_guidance_devices
from threedsr_ns.guidance import predraw_posterior_noise, view_generators
from threedsr_ns.model import ThreeDSRModel, ThreeDSRModelConfig, eval_mode
from threedsr_ns.phases import PhaseSchedule
from threedsr_ns.preflight import preflight
from threedsr_ns.sampler import sampler_step
from threedsr_ns.timing import SectionTimer
from threedsr_ns.viewer import ThreeDSRViewerPanel, mean_guidance_seconds

CONTACT_SHEET_VIEWS = 6


@dataclass
class ThreeDSRPipelineConfig(VanillaPipelineConfig):
    """The 3DSR loop: every phase setting lives here; the trainer's iteration count follows from them."""

    _target: Type = field(default_factory=lambda: ThreeDSRPipeline)
    datamanager: ThreeDSRDataManagerConfig = field(default_factory=ThreeDSRDataManagerConfig)
    model: ThreeDSRModelConfig = field(default_factory=ThreeDSRModelConfig)
    upscale_factor: int = 4
    """s: the HR renders and SR targets are s times the LR images in each dimension."""
    warmup_iters: int = 30000
    """N0: 3DGS iterations on the LR images before the first denoising step."""
    denoise_steps: int = 4
    """K: diffusion denoising steps; each is followed by an HR 3DGS phase."""
    phase_iters: int = 5000
    """M: 3DGS iterations at HR after each denoising step."""
    sr_backend: Literal["auto", "compact", "compact-v2", "sd-x4-upscaler", "bicubic", "realesrgan",
                        "sd-x4-upscaler-random", "tiny-random"] = "auto"
    """The SR model. auto: the SD x4 upscaler when it is on disk or the hub answers, else the compact prior shipped
    with the package (one log line says which and why); compact; compact-v2 (residual diffusion around the frozen
    Real-ESRGAN x4plus, shipped too); sd-x4-upscaler; bicubic (no diffusion, the same
    3DGS work); realesrgan (Real-ESRGAN x4plus per frame, deterministic: a baseline); the SD x4 architecture with
    random weights (cost measurements only, never quality); tiny-random (tests)."""
    sr_model_path: Optional[str] = None
    """A local folder (diffusers layout) or hub id for the SR model; default: the backend's own model id."""
    sr_prompt: str = ""
    """Text prompt for the SD x4 upscaler (embedded once at load)."""
    sr_negative_prompt: str = ""
    """Negative prompt; classifier-free guidance runs only when it differs from the prompt."""
    sr_guidance_scale: float = 1.0
    """Classifier-free guidance scale of the SD x4 upscaler (1: a single UNet pass per view)."""
    sr_noise_level: int = 20
    """Noise added to the LR conditioning image, as the SD x4 upscaler pipeline does (0..350)."""
    start_latents: Literal["noised_lr", "noise"] = "noised_lr"
    """Start from the noised encoding of the bicubic-upsampled LR (StableSR, the official code) or from noise."""
    start_timestep: Optional[int] = None
    """t1, the first denoising timestep; default the last training timestep. t1 > t2 > ... are evenly spaced."""
    posterior: Literal["ddpm", "ddim"] = "ddpm"
    """How x_{t_k} is drawn from x_{t_(k-1)} and the rendered clean latent: the DDPM posterior or DDIM (eta 0)."""
    mode: Literal["3dsr", "per-frame", "per-frame-interleaved"] = "3dsr"
    """3dsr: each denoising step moves toward the encoded 3D-consistent renders. per-frame: the paper's per-frame SR
    baseline: at the first boundary every view is sampled through all K steps on its own (each step toward the encoded
    colour-fixed SR image of the step before, no 3DGS in between), then 3DGS trains the same K*M HR iterations on
    those final images. per-frame-interleaved (ablation): 3dsr's schedule, each step toward the view's own colour-fixed
    SR target of the step before instead of the render. Every mode starts from the same warm-up and gets the same HR
    iterations, loss and densification phases."""
    color_fix: bool = True
    """Wavelet colour fix: keep the low frequencies of the bicubic LR, the high frequencies of the decode."""
    guidance_batch_size: int = 8
    """Views per batch through the SR model's VAE and denoiser."""
    sr_tile_size: Optional[int] = None
    """HR pixels per tile side where the SR model tiles large images (compact priors: denoising tiles; SD x4: VAE
    tiles; realesrgan: LR tiles of a quarter of it); None: the backend's default; 0: never tile. Smaller tiles bound
    the GPU memory; larger ones run faster."""
    sr_vae_dtype: Literal["float32", "bfloat16"] = "float32"
    """The SD x4 upscaler's VAE dtype: bfloat16 (float32's range, so none of float16's overflow) made a guidance step
    over fern's 17 views at 2016x1512 take ~30% less time on an H100
    (benchmarks/results/guidance-step-h100-sd4-vae-*.json); its effect on real SD x4 weights' images is not measured
    here, so float32 stays the default. Other backends have no VAE: naming one with bfloat16 is an error."""
    guidance_seed: int = 0
    """Seed of the diffusion noise, for reproducible runs: view i's noise at step k comes from its own generator,
    seeded guidance_seed + 1_000_003 k + i, so the SR targets do not depend on batching or --guidance-devices."""
    guidance_devices: int = 1
    """Processes the guidance steps are sharded over, by view: N > 1 on CUDA spawns workers on cuda:1..N-1 (each
    with its own frozen copy of the SR model, over NCCL); on the CPU, N gloo processes. 3DGS trains here only."""
    save_artifacts: bool = True
    """Write each guidance step's SR targets (PNG) and contact sheets into the run's folder, for people, on a
    background thread; a step that leaves the targets as they were (a non-diffusion backend) writes its sheet only."""

    @property
    def schedule(self) -> PhaseSchedule:
        return PhaseSchedule(self.warmup_iters, self.denoise_steps, self.phase_iters)


PREDRAW_NOISE_MAX_BYTES = 4 << 30
"""Largest posterior noise (float32, all views) drawn ahead of its step and held in host memory meanwhile (fox's 43
views at 1076x1916: 1.06 GB)."""


class ThreeDSRPipeline(VanillaPipeline):
    config: ThreeDSRPipelineConfig
    datamanager: ThreeDSRDataManager
    _model: ThreeDSRModel

    def __init__(self, config: ThreeDSRPipelineConfig, device: str, test_mode: Literal["test", "val", "inference"] = "val",
                 world_size: int = 1, local_rank: int = 0, grad_scaler=None):
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        # images with alpha are composited on the model's background: LR, SR targets, renders and L_lr agree
        self.datamanager.set_background(self.model.background_color)
        self.schedule = config.schedule
        self.steps_done = 0
        """Guidance steps run so far (0..K)."""
        self.latents: Optional[torch.Tensor] = None
        """x_{t_k} of the last guidance step, [N, C, h, w]: the sampler's state between steps (None before the first
        and after the last: at fern's paper size it is 17 x 3 x 1512 x 2016, 311 MB in fp16)."""
        self.guidance_log: List[Dict[str, float]] = []
        self.detail_log: List[Dict[str, float]] = []
        """Per guidance step k > 1 of a diffusion backend: detail energy of the new SR targets (and of the renders, in
        3dsr mode) over step 1's SR (`_log_detail`)."""
        self._optimizers = None
        self._artifacts_dir: Optional[Path] = None
        self._artifacts = ArtifactWriter()
        self._first_sr: Optional[torch.Tensor] = None
        """Step 1's (per-frame) SR of the first few views, uint8 [n, 3, sH, sW] on the CPU, for the contact sheets."""
        self.backend = None
        self.threedsr_viewer: Optional[ThreeDSRViewerPanel] = None
        """The 3DSR panel of the viewer (training only); an nn.Module so nerfstudio's viewer finds its elements."""
        self.guidance_group: Optional[GuidanceGroup] = None
        """The worker processes of --pipeline.guidance-devices > 1 (threedsr_ns.distributed), until the last step."""
        self.predraw_noise = torch.device(self.device).type == "cuda"
        """Draw each later step's DDPM posterior noise on a background thread during the HR phase before it: the same
        numbers (its views' CPU generators), off the step's time. On by default on CUDA, where the CPU cores idle
        while 3DGS trains; on the CPU they would compete with the training."""
        self._noise_ahead: Optional[Tuple[int, Future]] = None
        """(step k, the future of `predraw_posterior_noise` for it)."""
        self._noise_pool: Optional[ThreadPoolExecutor] = None
        if test_mode == "val":  # training: load (and check) the SR model now, not after a 30k-step warm-up
            check_guidance_devices(config.guidance_devices, self.device)
            self.backend = make_backend(**backend_kwargs(config), device=self.device)
            self.backend.check_scale(config.upscale_factor)
            self.backend.offload()
            self.datamanager.plan_guidance(config.upscale_factor, self.backend.latent_factor)
            self.timesteps = self.backend.denoise_timesteps(config.denoise_steps, config.start_timestep)
            self.threedsr_viewer = ThreeDSRViewerPanel.for_pipeline(self)
            preflight(self)  # before any 3DGS iteration: a bad capture or backend fails now, in one line
            self._fix_background_for_alpha()
            if config.guidance_devices > 1:  # the workers build their backends while the warm-up runs
                self.guidance_group = GuidanceGroup.launch(config.guidance_devices,
                                                           worker_backend_kwargs(config, self.backend), self.device)

    def _fix_background_for_alpha(self) -> None:
        """A capture with alpha is composited on the model's background colour (LR images, SR targets, L_lr); with
        splatfacto's "random" background the renders would be composited on a new colour each iteration, and the
        loss would train the transparent parts toward noise. Render on the fixed colour instead, and say so."""
        datasets = (self.datamanager.train_dataset, self.datamanager.eval_dataset)
        if self.model.config.background_color == "random" and any(d.has_alpha for d in datasets):
            self.model.fixed_background = True
            rgb = ", ".join(f"{c:.3f}" for c in self.model.background_color.tolist())
            CONSOLE.log(f"[bold]3dsr[/bold] the images have alpha: composited on, and rendered on, the fixed background "
                        f"({rgb}) instead of splatfacto's random one; choose it with --pipeline.model.background-color")

    # -- the loop ---------------------------------------------------------------------------------------

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        self._optimizers = training_callback_attributes.optimizers
        trainer = training_callback_attributes.trainer
        if self.config.save_artifacts and trainer is not None:
            self._artifacts_dir = Path(trainer.base_dir)
        callbacks.append(TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self.guidance_callback))
        callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self.final_artifacts_callback))
        if self.threedsr_viewer is not None:
            self.threedsr_viewer.attach(trainer)
            callbacks.append(TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self.viewer_progress_callback,
                                              update_every_num_iters=10))
        return callbacks

    def guidance_callback(self, step: int) -> None:
        """Run every guidance step whose phase boundary has been reached (one, except after a resume)."""
        while self.steps_done < self.schedule.denoise_steps and step >= self.schedule.guidance_step_start(self.steps_done + 1):
            self.run_guidance_step(self.steps_done + 1, step)
        if self.steps_done >= self.schedule.denoise_steps:  # e.g. resumed after the last step
            self.close_guidance_group()

    def close_guidance_group(self) -> None:
        """Stop the guidance workers (if any): after the last sampler step, or when training stops."""
        if self.guidance_group is not None:
            self.guidance_group.close()
            self.guidance_group = None

    def viewer_progress_callback(self, step: int) -> None:
        assert self.threedsr_viewer is not None
        self.threedsr_viewer.update_progress(step, guidance_seconds=mean_guidance_seconds(self.guidance_log))

    @torch.no_grad()
    def run_guidance_step(self, k: int, step: int) -> None:
        """Denoising step k at iteration `step`: new SR targets (per the mode), then HR phase k begins."""
        assert self.backend is not None, "guidance runs only in a training pipeline"
        cfg, backend, dm = self.config, self.backend, self.datamanager
        timer = SectionTimer(self.device)
        CONSOLE.log(f"[bold]3dsr[/bold] denoise step {k}/{cfg.denoise_steps} (t={self.timesteps[k - 1]}) at iteration {step}")
        if self.threedsr_viewer is not None:
            self.threedsr_viewer.on_guidance_start(k)
        if k == 1:
            dm.enter_hr(cfg.upscale_factor)
        work = dm.targets_device  # the device, or the CPU when the full-size tensors exceed the budget
        lr = dm.lr_images(work)
        lr_up = bicubic_upsample(lr, cfg.upscale_factor)
        backend.to(self.device)
        sr: Optional[torch.Tensor] = None  # None: the SR targets stay as they are for this phase
        if k == 1:
            sr = self._sampler_step(1, lr, lr_up, timer)
            self._first_sr = _to_uint8(sr[:CONTACT_SHEET_VIEWS]).cpu()
            if cfg.mode == "per-frame" and backend.is_diffusion:  # sample every view to the end, on its own
                for j in range(2, cfg.denoise_steps + 1):
                    sr = self._sampler_step(j, lr, lr_up, timer, toward=sr)
        elif cfg.mode != "per-frame" and backend.is_diffusion:  # a non-diffusion baseline's targets never change
            if cfg.mode == "3dsr":
                with timer("render"):
                    toward = self.render_train_views(None, work)  # 3D consistency enters here
            else:
                toward = dm.sr_targets.permute(0, 3, 1, 2)
            sr = self._sampler_step(k, lr, lr_up, timer, toward=toward)
            self._log_detail(k, sr, toward if cfg.mode == "3dsr" else None)
        if sr is not None:
            with timer("swap"):
                dm.swap(sr.permute(0, 2, 3, 1))
            if self.threedsr_viewer is not None:
                self.threedsr_viewer.on_swap(dm.sr_targets)
        backend.offload()
        self.steps_done = k
        if k == cfg.denoise_steps or cfg.mode == "per-frame" or not backend.is_diffusion:  # no sampler step is left
            self.close_guidance_group()
            self.latents = None  # nothing reads x_t again: free it, and keep it out of the checkpoints
            if self._noise_pool is not None:
                self._noise_pool.shutdown(wait=False)
                self._noise_pool = None
        self._draw_noise_ahead(k + 1)
        self.model.start_hr_phase(step, cfg.phase_iters)
        self._restart_lr_schedules()
        self.guidance_log.append({"step": k, "iteration": step, **timer.seconds})
        parts = ", ".join(f"{n} {s:.2f}s" for n, s in timer.seconds.items())
        CONSOLE.log(f"[bold]3dsr[/bold] denoise step {k} done: {parts or f'nothing to sample ({backend.name})'}")
        self.write_artifacts(f"step{k}", targets_changed=sr is not None)

    def _log_detail(self, k: int, sr: torch.Tensor, renders: Optional[torch.Tensor]) -> None:
        """How much detail is left (detail_consistency.hf_energy_ratio: spectral energy above the LR Nyquist, first
        CONTACT_SHEET_VIEWS views), over step 1's per-frame SR: of the renders step k moved toward (3dsr) and of its new
        SR targets. Into detail_log and the log: whether 3D guidance keeps the invented detail or the targets soften
        toward soft renders."""
        if self._first_sr is None:
            return
        n = self._first_sr.shape[0]

        def views(images: torch.Tensor) -> torch.Tensor:  # [n, H, W, 3] on the model's device (targets: maybe the CPU)
            return images[:n].to(self.device, torch.float32).permute(0, 2, 3, 1)

        step1, scale = views(self._first_sr / 255.0), self.config.upscale_factor
        try:
            entry = {"step": k, "targets_vs_step1": hf_energy_ratio(views(sr), step1, scale).ratio}
            if renders is not None:
                entry["renders_vs_step1"] = hf_energy_ratio(views(renders), step1, scale).ratio
        except ValueError:  # step 1's SR holds no energy above the LR Nyquist: nothing to compare with
            return
        self.detail_log.append(entry)
        CONSOLE.log(f"[bold]3dsr[/bold] step {k} detail energy over step 1's SR (first {n} views): "
                    + ", ".join(f"{name.split('_')[0]} {value:.2f}" for name, value in entry.items() if name != "step"))

    def _sampler_step(self, k: int, lr: torch.Tensor, lr_up: torch.Tensor, timer: "SectionTimer",
                      toward: Optional[torch.Tensor] = None) -> torch.Tensor:
        """threedsr_ns.sampler's step k for every train view, from (and into) self.latents; the SR images."""
        cfg = self.config
        if self.guidance_group is not None:  # sharded by view over the group's processes
            x_t, sr = self.guidance_group.sampler_step(
                self.backend, self.timesteps, k, lr, lr_up, cfg.guidance_seed, scale=cfg.upscale_factor,
                start_mode=cfg.start_latents, posterior=cfg.posterior, color_fix=cfg.color_fix, latents=self.latents,
                toward=toward, timer=timer)
        else:
            with timer("noise"):  # waits for the draw if it has not finished during the phase
                generators, noise = self._take_noise_ahead(k, lr.shape[0])
            if generators is None:
                generators = view_generators(cfg.guidance_seed, k, range(lr.shape[0]))  # one per view
            x_t, sr = sampler_step(self.backend, self.timesteps, k, lr, lr_up, generators,
                                   start_mode=cfg.start_latents, posterior=cfg.posterior, color_fix=cfg.color_fix,
                                   latents=self.latents, toward=toward, noise=noise, timer=timer)
        self.latents = x_t.float()
        return sr

    def _draw_noise_ahead(self, k: int) -> None:
        """Start drawing step k's posterior noise on a background thread (`predraw_noise`), when step k will draw it
        in this process: a DDPM posterior step from the latents held now, below PREDRAW_NOISE_MAX_BYTES."""
        cfg, latents = self.config, self.latents
        if (not self.predraw_noise or latents is None or k > cfg.denoise_steps or cfg.posterior != "ddpm"
                or self.guidance_group is not None or latents.numel() * 4 > PREDRAW_NOISE_MAX_BYTES):
            return
        if self._noise_pool is None:
            self._noise_pool = ThreadPoolExecutor(1, thread_name_prefix="3dsr-noise")
        pin = latents.device.type == "cuda"  # the step copies it to the GPU
        self._noise_ahead = (k, self._noise_pool.submit(predraw_posterior_noise, cfg.guidance_seed, k,
                                                        range(latents.shape[0]), tuple(latents.shape), pin))

    def _take_noise_ahead(self, k: int, views: int) -> Tuple[Optional[List[torch.Generator]], Optional[torch.Tensor]]:
        """(generators, noise) drawn ahead for step k, or (None, None) when none was (or it was for another step)."""
        ahead, self._noise_ahead = self._noise_ahead, None
        if ahead is None or ahead[0] != k:
            return None, None
        generators, noise = ahead[1].result()
        return (generators, noise) if len(generators) == views else (None, None)

    def final_artifacts_callback(self, step: int) -> None:
        if step == self.schedule.total_iterations - 1 and self.steps_done > 0:
            self.write_artifacts("final", targets_changed=False)  # the last step's targets: linked, not re-encoded
            self._artifacts.wait()  # the run's pictures are on disk when training returns

    @torch.no_grad()
    def write_artifacts(self, name: str, targets_changed: bool = True) -> None:
        """Queue contact_sheet_<name>.png (first few views) and, when `targets_changed`, sr_targets/<name>/<view>.png
        for every train view for the background writer; "final" always gets its folder (links to the last step's
        PNGs, or, after a resume, the targets encoded anew)."""
        if self._artifacts_dir is None or self.datamanager.sr_targets is None:
            return
        sr = self.datamanager.sr_targets.permute(0, 3, 1, 2)
        names = self.datamanager.train_dataset._dataparser_outputs.image_filenames
        views = range(min(CONTACT_SHEET_VIEWS, len(names)))
        first = self._first_sr.float() / 255.0 if self._first_sr is not None else sr[: len(views)]
        sheet = contact_sheet(self.datamanager.lr_images(sr.device)[: len(views)], first.to(sr.device),
                              sr[: len(views)], self.render_train_views(views, device=sr.device), max_views=len(views))
        encode = targets_changed or (name == "final" and self._artifacts.last_targets_folder is None)
        folder = self._artifacts_dir / "sr_targets" / name if encode or name == "final" else None
        self._artifacts.submit(self._artifacts_dir / f"contact_sheet_{name}.png", sheet, folder,
                               sr if encode else None, names)

    def render_train_views(self, views: Optional[Iterable[int]] = None, device=None) -> torch.Tensor:
        """Render train views (default: all) at the current (HR) camera size: [N, 3, H, W] in [0, 1] on `device`
        (default: the model's), one view at a time."""
        cameras = self.datamanager.train_dataset.cameras
        views = range(len(cameras)) if views is None else views
        with eval_mode(self.model):
            images = [self.model.get_outputs_for_camera(cameras[i : i + 1])["rgb"].to(device or self.device)
                      .permute(2, 0, 1) for i in views]
        return torch.stack(images).clamp_(0.0, 1.0)  # contiguous [N, 3, H, W]: the sampler encodes it as it is

    def _restart_lr_schedules(self) -> None:
        """Each HR phase restarts the learning-rate schedules from their initial rates, as the official code does."""
        if self._optimizers is None:
            return
        for name, scheduler in self._optimizers.schedulers.items():
            scheduler.last_epoch = 0
            for group, base_lr, lr_lambda in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base_lr * lr_lambda(0)

    # -- checkpoints ------------------------------------------------------------------------------------

    def get_extra_state(self) -> Dict:
        """Checkpoint size stays bounded: SR targets (and step 1's SR for the contact sheets) as uint8, latents
        in fp16 while a sampler step is left, all on the CPU."""
        latents = None if self.latents is None else self.latents.half().cpu()
        return {"steps_done": self.steps_done, "latents": latents,
                "sr_targets_uint8": self.datamanager.targets_state(), "first_sr_uint8": self._first_sr}

    def set_extra_state(self, state: Dict) -> None:
        self.steps_done = int(state["steps_done"])
        self._first_sr = state.get("first_sr_uint8")
        targets = state.get("sr_targets_uint8", state.get("sr_targets"))  # float "sr_targets": older checkpoints
        if self.steps_done > 0:
            self.datamanager.enter_hr(self.config.upscale_factor)
            self.datamanager.load_targets_state(targets)
            if self.threedsr_viewer is not None:
                self.threedsr_viewer.on_swap(self.datamanager.sr_targets)
            self.model.start_hr_phase(self.schedule.guidance_step_start(self.steps_done), self.config.phase_iters)
        latents = state["latents"]
        self.latents = None if latents is None else latents.float().to(self.datamanager.targets_device)


def backend_kwargs(config: ThreeDSRPipelineConfig) -> Dict:
    """make_backend's arguments for the pipeline's SR model (all but the device)."""
    return dict(name=config.sr_backend, model_path=config.sr_model_path, seed=config.guidance_seed,
                batch_size=config.guidance_batch_size, scale=config.upscale_factor, prompt=config.sr_prompt,
                negative_prompt=config.sr_negative_prompt, guidance_scale=config.sr_guidance_scale,
                noise_level=config.sr_noise_level, tile_size=config.sr_tile_size,
                vae_dtype=None if config.sr_vae_dtype == "float32" else config.sr_vae_dtype)


def worker_backend_kwargs(config: ThreeDSRPipelineConfig, backend) -> Dict:
    """make_backend's arguments for a guidance worker's copy of `backend`: `auto` resolved to what it chose here, so
    that every rank holds the same model."""
    kwargs = backend_kwargs(config)
    if config.sr_backend == "auto":
        kwargs["name"] = "sd-x4-upscaler" if backend.name == "sd-x4-upscaler" else "compact"
        if kwargs["name"] == "compact":
            kwargs["model_path"] = getattr(backend, "source", None) or None
    return kwargs


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
