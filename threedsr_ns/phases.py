"""The 3DSR schedule: an LR warm-up, then K denoising steps each followed by an HR 3DGS phase.

    step:  0 ........ N0 ........ N0+M ........ N0+2M ... N0+K*M
           LR warm-up | guidance 1 | guidance 2 | ... | guidance K, HR phase K | end

Guidance step k (1-based) runs just before training iteration N0 + (k-1)*M.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List


@dataclass(frozen=True)
class PhaseSchedule:
    warmup_iters: int
    """N0: iterations of 3DGS on the LR images before the first denoising step."""
    denoise_steps: int
    """K: number of diffusion denoising steps, each followed by one HR phase."""
    phase_iters: int
    """M: 3DGS iterations at HR after each denoising step."""

    def __post_init__(self) -> None:
        if self.warmup_iters < 1:
            raise ValueError(f"warmup_iters (N0) must be >= 1, got {self.warmup_iters}")
        if self.denoise_steps < 1:
            raise ValueError(f"denoise_steps (K) must be >= 1, got {self.denoise_steps}")
        if self.phase_iters < 1:
            raise ValueError(f"phase_iters (M) must be >= 1, got {self.phase_iters}")

    @property
    def total_iterations(self) -> int:
        return self.warmup_iters + self.denoise_steps * self.phase_iters

    def guidance_step_start(self, k: int) -> int:
        """The training iteration before which guidance step k (1..K) runs."""
        if not 1 <= k <= self.denoise_steps:
            raise ValueError(f"guidance step {k} is outside 1..{self.denoise_steps}")
        return self.warmup_iters + (k - 1) * self.phase_iters

    @property
    def guidance_starts(self) -> List[int]:
        return [self.guidance_step_start(k) for k in range(1, self.denoise_steps + 1)]

    def phase_at(self, step: int) -> int:
        """0 during the LR warm-up, k during the HR phase that follows guidance step k."""
        if step < self.warmup_iters:
            return 0
        return min((step - self.warmup_iters) // self.phase_iters + 1, self.denoise_steps)

    def describe(self, step: int) -> str:
        """A one-line human description of where `step` is in the schedule."""
        k = self.phase_at(step)
        if k == 0:
            return f"LR warm-up {step}/{self.warmup_iters}"
        done = step - self.guidance_step_start(k)
        return f"denoise step {k}/{self.denoise_steps}, HR phase {done}/{self.phase_iters}"
