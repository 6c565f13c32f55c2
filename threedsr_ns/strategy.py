"""gsplat's DefaultStrategy made phase-aware and image-size-aware for 3DSR.

- Phases: 3DSR restarts densification in each HR phase (densify in its first half). The strategy sees
  the step relative to the current phase start, so refine_start/stop and the opacity-reset period
  apply per phase.
- Image size: gsplat gives every projected Gaussian a radius of at least 2 px. On a small image (LLFF's
  LR is 126x94; splatfacto's 1/4-size start makes it 31x23) 2 px exceeds the default 5 % "too big on
  screen" split threshold, so every Gaussian splits at every refinement and the count explodes. The
  screen-size thresholds are therefore never allowed below `screen_size_margin` times that floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

from gsplat.strategy import DefaultStrategy


@dataclass
class PhasedStrategy(DefaultStrategy):
    phase_start: int = 0
    """Global step at which the current phase started (0 for the LR warm-up)."""
    min_radius_px: float = 2.0
    """gsplat's smallest projected radius (3 sigma of its 0.3 px anti-aliasing blur, rounded up)."""
    screen_size_margin: float = 2.0
    """A Gaussian counts as big on screen only above this many times the smallest radius."""

    def start_phase(self, step: int, refine_stop_iter: int) -> None:
        """Restart densification at global `step`; it stops `refine_stop_iter` steps into the phase."""
        self.phase_start = step
        self.refine_stop_iter = refine_stop_iter

    def screen_size_floor(self, width: int, height: int) -> float:
        """The smallest screen fraction a Gaussian can cover on a width x height image, with margin."""
        return self.screen_size_margin * self.min_radius_px / max(width, height)

    def step_post_backward(self, params, optimizers, state: Dict[str, Any], step: int, info: Dict[str, Any], packed: bool = False):
        local_step = step - self.phase_start
        if self.phase_start > 0 and local_step == 0:
            # gsplat resets opacities at every step % reset_every == 0, step 0 included; at the start of an
            # HR phase that would wipe out the trained scene, so the phase's first step is left out.
            return
        floor = self.screen_size_floor(info["width"], info["height"])
        grow, prune = self.grow_scale2d, self.prune_scale2d
        self.grow_scale2d, self.prune_scale2d = max(grow, floor), max(prune, floor)
        try:
            super().step_post_backward(params, optimizers, state, local_step, info, packed=packed)
        finally:
            self.grow_scale2d, self.prune_scale2d = grow, prune
