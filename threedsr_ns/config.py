"""The `3dsr` method: `ns-train 3dsr --data scene`, and `3dsr-preview`, a short run that a CPU finishes.

Splatfacto's optimisers and trainer settings, the 3DSR pipeline, and an iteration count that follows from
the phase settings (N0 + K*M; paper: 30000 + 4*5000).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Type

import torch
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.plugins.types import MethodSpecification
from nerfstudio.utils.rich_utils import CONSOLE

from threedsr_ns.checkpoints import FloatExponentialDecaySchedulerConfig, legacy_numpy_scalars
from threedsr_ns.errors import SetupError
from threedsr_ns.pipeline import ThreeDSRPipelineConfig


class ThreeDSRTrainer(Trainer):
    """nerfstudio's trainer with the iteration count taken from the 3DSR schedule.

    On a resume nerfstudio would run max_num_iterations *more* steps; a 3dsr run always ends at N0 + K*M.
    """

    def __init__(self, config: "ThreeDSRTrainerConfig", local_rank: int = 0, world_size: int = 1) -> None:
        config.max_num_iterations = config.pipeline.schedule.total_iterations
        super().__init__(config, local_rank, world_size)

    def setup(self, test_mode="val") -> None:
        """ns-train's: a SetupError (the user's to fix) ends the process with its one line and exit code 1, not a
        stack trace. Code that builds the trainer itself calls `setup_raising` (threedsr_ns.runs.setup_trainer)."""
        try:
            self.setup_raising(test_mode)
        except SetupError as error:
            raise SystemExit(f"ns-train {self.config.method_name}: {error}") from None

    def setup_raising(self, test_mode="val") -> None:
        """`setup`, with a SetupError raised as it is (a script training several methods names the one that failed)."""
        super().setup(test_mode)
        if self.device == "cpu" and not torch.cuda.is_available() and self.config.method_name == "3dsr":
            datamanager = self.pipeline.datamanager
            CONSOLE.log(cpu_time_estimate(self.config.pipeline, datamanager.lr_size, datamanager.num_train_views))

    def _load_checkpoint(self) -> None:
        with legacy_numpy_scalars():  # a run resumed from a checkpoint written before the float schedules
            super()._load_checkpoint()
        self._point_optimizers_at_loaded_parameters()

    def _point_optimizers_at_loaded_parameters(self) -> None:
        """Splatfacto's load_state_dict replaces every Gaussian parameter by a new tensor of the checkpoint's
        size, but nerfstudio built the optimizers on the old ones first: a resumed run would step orphans (and
        train nothing) until the next densification re-linked them. Move each optimizer, with its loaded Adam
        moments, onto the model's current parameters."""
        current = self.pipeline.get_param_groups()
        for name, optimizer in self.optimizers.optimizers.items():
            params = current[name]
            for group in optimizer.param_groups:
                if len(group["params"]) != len(params):
                    raise RuntimeError(f"optimizer '{name}' holds {len(group['params'])} tensors, the model {len(params)}")
                for old, new in zip(group["params"], params):
                    if old is not new and old in optimizer.state:
                        optimizer.state[new] = optimizer.state.pop(old)
                group["params"] = list(params)
            self.optimizers.parameters[name] = params

    def train(self) -> None:
        end = self.pipeline.schedule.total_iterations
        if self.config.stop_at is not None:
            end = min(end, self.config.stop_at)
        self.config.max_num_iterations = max(end - self._start_step, 0)
        super().train()


@dataclass
class ThreeDSRTrainerConfig(TrainerConfig):
    _target: Type = field(default_factory=lambda: ThreeDSRTrainer)
    pipeline: ThreeDSRPipelineConfig = field(default_factory=ThreeDSRPipelineConfig)
    stop_at: Optional[int] = None
    """End the run before this iteration (its last checkpoint is iteration stop_at - 1) instead of at N0 + K*M:
    e.g. --stop-at N0 stops after the LR warm-up, and runs started from that checkpoint with --load-checkpoint
    all share it."""


def _splatfacto_optimizers() -> dict:
    """Splatfacto's Gaussian optimisers and rates (nerfstudio 1.1.5). The schedules restart per HR phase.

    Written out rather than read from nerfstudio's method_configs: that module discovers plugins (this one)
    while it is being imported."""

    def adam(lr: float) -> AdamOptimizerConfig:
        return AdamOptimizerConfig(lr=lr, eps=1e-15)

    # nerfstudio's ExponentialDecaySchedulerConfig with float rates: checkpoints load with weights_only=True
    return {
        "means": {"optimizer": adam(1.6e-4), "scheduler": FloatExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=30000)},
        "features_dc": {"optimizer": adam(0.0025), "scheduler": None},
        "features_rest": {"optimizer": adam(0.0025 / 20), "scheduler": None},
        "opacities": {"optimizer": adam(0.05), "scheduler": None},
        "scales": {"optimizer": adam(0.005), "scheduler": None},
        "quats": {"optimizer": adam(0.001), "scheduler": None},
        "camera_opt": {
            "optimizer": adam(1e-4),
            "scheduler": FloatExponentialDecaySchedulerConfig(lr_final=5e-7, max_steps=30000, warmup_steps=1000, lr_pre_warmup=0),
        },
    }


def threedsr_trainer_config() -> ThreeDSRTrainerConfig:
    pipeline = ThreeDSRPipelineConfig()
    return ThreeDSRTrainerConfig(
        method_name="3dsr",
        steps_per_eval_image=500,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=5000,
        max_num_iterations=pipeline.schedule.total_iterations,
        mixed_precision=False,
        pipeline=pipeline,
        optimizers=_splatfacto_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        machine=MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu"),
        vis="viewer",
    )


threedsr_method = MethodSpecification(
    config=threedsr_trainer_config(),
    description="3DSR (ICCV 2025): 3D-consistent diffusion super-resolution alternated with Gaussian splatting",
)


CPU_MS_PER_ITERATION = (14365.2, 1.939)
"""(a, b): one training iteration on the CPU rasterizer (2 CPU cores) takes ~a * MP**b ms at MP megapixels: the power
law through the median LR (504x378) and HR (2016x1512) iterations of `ns-train 3dsr`'s first iterations on LLFF fern
(benchmarks/results/cpu-fern.json, scripts/benchmark_cpu.py; an iteration's cost grows faster than its pixels there).
Before the warm-up densifies: a lower bound."""

CPU_MIN_MS_PER_ITERATION = 191.0
"""No iteration is cheaper than the cheapest measured on 2 CPU cores: 3dsr-preview's at 126x94, with fewer Gaussians
than the default (benchmarks/results/cpu-fern.json): the floor under the power law at small sizes."""

CPU_GUIDANCE_S_PER_VIEW_MEGAPIXEL = 26.9
"""Seconds of one compact-prior guidance step (its renders, denoising and decoding) per view and HR megapixel on 2
CPU cores: the mean of the preview run's logged steps in benchmarks/results/cpu-fern.json."""

CPU_PREVIEW_MINUTES = 9.6
"""`ns-train 3dsr-preview` on LLFF fern at the small protocol (126x94 -> 504x376), 2 CPU cores: its wall time in
benchmarks/results/cpu-fern.json."""


def cpu_time_estimate(pipeline: ThreeDSRPipelineConfig, lr_size, views: int) -> str:
    """One line: at least how long this schedule takes on 2 CPU cores, and that 3dsr-preview exists."""
    (h, w), s, schedule = lr_size, pipeline.upscale_factor, pipeline.schedule
    hr_iters = schedule.total_iterations - schedule.warmup_iters
    a, b = CPU_MS_PER_ITERATION
    lr_ms, hr_ms = (max(a * (h * w * f * f / 1e6) ** b, CPU_MIN_MS_PER_ITERATION) for f in (1, s))
    step_s = views * h * w * s * s / 1e6 * CPU_GUIDANCE_S_PER_VIEW_MEGAPIXEL
    hours = (schedule.warmup_iters * lr_ms + hr_iters * hr_ms) / 3.6e6 + schedule.denoise_steps * step_s / 3600
    took = f"{hours:.0f} h" if hours >= 1 else f"{hours * 60:.0f} min"
    step = f"{step_s / 60:.0f} min" if step_s >= 60 else f"{step_s:.0f} s"
    return (f"[bold]3dsr[/bold] without CUDA: {schedule.warmup_iters} iterations at {w}x{h}, then {schedule.denoise_steps} "
            f"guidance steps over {views} views and {hr_iters} iterations at {s * w}x{s * h}, take at least ~{took} on 2 "
            f"CPU cores (~{lr_ms / 1e3:.1f} / {hr_ms / 1e3:.1f} s an iteration before densification slows them, ~{step} "
            f"a guidance step with the compact prior); `ns-train 3dsr-preview` runs the same method on a short "
            f"schedule ({CPU_PREVIEW_MINUTES:.1f} min for LLFF fern at 126x94 on 2 CPU cores)")


def threedsr_preview_trainer_config() -> ThreeDSRTrainerConfig:
    """3dsr on a short schedule with small sizes, to see real SR targets from the shipped compact prior on a
    CPU in minutes: every option can still be changed on the command line."""
    config = threedsr_trainer_config()
    pipeline = config.pipeline
    config.method_name = "3dsr-preview"
    pipeline.warmup_iters, pipeline.denoise_steps, pipeline.phase_iters = 300, 4, 10
    pipeline.sr_backend = "compact"
    pipeline.guidance_batch_size = 4
    model = pipeline.model
    # 2000 of the SfM points and no densification: on the CPU rasterizer an iteration costs in proportion to the
    # Gaussians (densifying fern's warm-up took it from ~1 s to 10-18 s per iteration)
    model.max_seed_points, model.sh_degree = 2000, 1
    model.stop_split_at, model.hr_densify_fraction = 0, 0.0
    config.max_num_iterations = pipeline.schedule.total_iterations
    config.steps_per_eval_image, config.steps_per_save, config.steps_per_eval_all_images = 100000, 1000, 100000
    return config


threedsr_preview_method = MethodSpecification(
    config=threedsr_preview_trainer_config(),
    description="3dsr on a short schedule with the shipped compact prior: real SR targets on a CPU in ~10 minutes",
)
