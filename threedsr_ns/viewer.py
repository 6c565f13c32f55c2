"""The 3DSR panel of nerfstudio's viewer (viser): where the loop is, its train-view thumbnails, a side-by-side.

nerfstudio 1.1.5 shows, under "Custom Elements", every `ViewerElement` it finds on the pipeline when the viewer
starts (`nerfstudio.viewer.utils.parse_object`). That search only descends into `torch.nn.Module` attributes, so
the panel is an `nn.Module` (with no parameters or buffers: the pipeline's state_dict and checkpoints do not
change) held as an attribute of the pipeline. It shows

- the phase (LR warm-up / denoise step k of K, HR phase), a progress bar of that phase, the run's progress and
  the time left (measured seconds per iteration; each remaining denoise step counted when its cost is known);
- after every swap, each train camera frustum's thumbnail becomes that view's current SR target;
- a train-view dropdown and a button that composes [LR input upsampled nearest | SR target | render] for that
  view and shows it, as a JPEG, in a markdown element of the panel.

Cost: nothing runs per viewer frame. Progress pushes three short strings and a number, at most every
`min_update_seconds`; thumbnails are made once per swap (area-downsampled on the device, about 100 px, one
JPEG each); the side-by-side renders one view, only when the button is pressed. Without a viewer
(`--vis tensorboard`: the elements are never installed and `trainer.viewer_state` is None) every method returns
at once. GUI errors are logged, never raised into training.

viser 0.2.7's `CameraFrustumHandle` has no image setter: a frustum's image changes by adding the frustum again
under the same scene name (same fov, aspect, scale, pose, visibility), moving its click callbacks over and
putting the new handle into the viewer's `camera_handles`. A newer viser with an `image` property is used as is.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
import viser
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerDropdown, ViewerElement, ViewerText
from PIL import Image

from threedsr_ns.model import eval_mode
from threedsr_ns.phases import PhaseSchedule

ImageLike = Union[torch.Tensor, np.ndarray]
"""[H, W, C>=3], uint8 or float in [0, 1], on any device."""

_HERE = Path(__file__).resolve().parent


# -- two viser widgets nerfstudio 1.1.5 does not wrap ------------------------------------------------------------

class ViewerProgressBar(ViewerElement[float]):
    """viser's progress bar (0..100) as a nerfstudio ViewerElement; `animated` shows a striped "busy" bar."""

    gui_handle: Optional[viser.GuiProgressBarHandle]

    def __init__(self, name: str, default_value: float = 0.0, visible: bool = True) -> None:
        super().__init__(name, visible=visible)
        self._value = float(default_value)
        self._animated = False

    def _create_gui_handle(self, viser_server: viser.ViserServer) -> None:
        self.gui_handle = viser_server.gui.add_progress_bar(self._value, visible=self.visible, animated=self._animated)

    def install(self, viser_server: viser.ViserServer) -> None:
        self._create_gui_handle(viser_server)

    @property
    def value(self) -> float:
        return self.gui_handle.value if self.gui_handle is not None else self._value

    @value.setter
    def value(self, value: float) -> None:
        self._value = min(max(float(value), 0.0), 100.0)
        if self.gui_handle is not None and self.gui_handle.value != self._value:
            self.gui_handle.value = self._value

    @property
    def animated(self) -> bool:
        return self._animated

    @animated.setter
    def animated(self, animated: bool) -> None:
        self._animated = bool(animated)
        if self.gui_handle is not None and self.gui_handle.animated != self._animated:
            self.gui_handle.animated = self._animated


class ViewerMarkdown(ViewerElement[str]):
    """viser's markdown (which shows `![..](data:image/...)` images) as a nerfstudio ViewerElement."""

    gui_handle: Optional[viser.GuiMarkdownHandle]

    def __init__(self, name: str, default_value: str = "", visible: bool = True) -> None:
        super().__init__(name, visible=visible)
        self._content = default_value

    def _create_gui_handle(self, viser_server: viser.ViserServer) -> None:
        # image_root only silences viser's warning about relative paths; our images are data: URLs
        self.gui_handle = viser_server.gui.add_markdown(self._content, image_root=_HERE, visible=self.visible)

    def install(self, viser_server: viser.ViserServer) -> None:
        self._create_gui_handle(viser_server)

    @property
    def value(self) -> str:
        return self.gui_handle.content if self.gui_handle is not None else self._content

    @value.setter
    def value(self, value: str) -> None:
        self._content = value
        if self.gui_handle is not None:
            self.gui_handle.content = value


# -- pure helpers (tested without a server) -----------------------------------------------------------------------

def format_seconds(seconds: float) -> str:
    """'1h 04m', '3m 12s', '45s'."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def mean_guidance_seconds(guidance_log: Sequence[Dict[str, float]]) -> Optional[float]:
    """Mean wall time of one guidance step from the pipeline's `guidance_log` (timed parts summed); None if empty."""
    totals = [sum(v for k, v in entry.items() if k not in ("step", "iteration")) for entry in guidance_log]
    return statistics.fmean(totals) if totals else None


def _hwc_float(image: ImageLike, device: Optional[torch.device] = None) -> torch.Tensor:
    """[H, W, C>=3] uint8/float -> [H, W, 3] float32 in [0, 1] (on `device`, default the image's own)."""
    t = torch.as_tensor(image)
    if device is not None:
        t = t.to(device)
    if t.ndim != 3 or t.shape[-1] < 3:
        raise ValueError(f"expected an [H, W, C>=3] image, got shape {tuple(t.shape)}")
    t = t[..., :3]
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    return t.clamp(0.0, 1.0)


def _resize_hwc(image: torch.Tensor, size: Tuple[int, int], upsample: str = "nearest") -> torch.Tensor:
    """[h, w, 3] float -> [H, W, 3]: `upsample` mode when growing, area when shrinking."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    grow = size[0] >= image.shape[0] and size[1] >= image.shape[1]
    x = image.permute(2, 0, 1)[None]
    mode = upsample if grow else "area"
    x = F.interpolate(x, size=size, mode=mode, **({"align_corners": False} if mode in ("bilinear", "bicubic") else {}))
    return x[0].permute(1, 2, 0).clamp(0.0, 1.0)


def compose_side_by_side(lr: ImageLike, sr: Optional[ImageLike], render: Optional[ImageLike],
                         size: Tuple[int, int], gap: int = 2, placeholder: float = 0.15) -> np.ndarray:
    """[LR upsampled nearest | SR target | render], each panel `size` = (H, W), `gap` white columns between them.

    A missing SR target (LR warm-up) or render is a dark grey panel. Renders of another size (the LR warm-up
    renders at LR) are resized: nearest when growing, area when shrinking. Returns [H, 3W + 2 gap, 3] uint8.
    """
    h, w = int(size[0]), int(size[1])
    device = torch.as_tensor(sr).device if sr is not None else torch.as_tensor(lr).device
    panels = []
    for image in (lr, sr, render):
        if image is None:
            panels.append(torch.full((h, w, 3), placeholder, device=device))
        else:
            panels.append(_resize_hwc(_hwc_float(image, device), (h, w), upsample="nearest"))
    white = torch.ones((h, gap, 3), device=device)
    strip = torch.cat([panels[0], white, panels[1], white, panels[2]], dim=1)
    return (strip * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def make_thumbnails(images: torch.Tensor, indices: Iterable[int], short_side: int = 100,
                    chunk: int = 8) -> Dict[int, np.ndarray]:
    """[N, H, W, 3] float in [0, 1] (any device) -> {index: [h, w, 3] uint8 numpy} with min(h, w) = short_side
    (as nerfstudio's own frustum thumbnails), area-downsampled on the device a few views at a time."""
    indices = [int(i) for i in indices]
    _, height, width = images.shape[:3]
    scale = min(1.0, short_side / min(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    out: Dict[int, np.ndarray] = {}
    for start in range(0, len(indices), chunk):
        part = indices[start : start + chunk]
        x = images[torch.as_tensor(part, device=images.device)][..., :3].permute(0, 3, 1, 2).float()
        if size != (height, width):
            x = F.interpolate(x, size=size, mode="area")
        x = (x.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out.update(zip(part, x))
    return out


def _jpeg_data_url(image: np.ndarray, quality: int = 90) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _never_raise(method: Callable) -> Callable:
    """GUI trouble must not stop a training run: log it (once per method) and carry on."""
    logged: set = set()

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001
            if method.__name__ not in logged:
                logged.add(method.__name__)
                CONSOLE.log(f"[yellow]3dsr viewer panel: {method.__name__} failed ({error!r}); training goes on")
            return None

    return wrapper


# -- the panel ----------------------------------------------------------------------------------------------------

class ThreeDSRViewerPanel(torch.nn.Module):
    """The 3DSR elements of the viewer, and what updates them. Build it in the pipeline's __init__.

    Args:
        schedule: the phase schedule (N0, K, M).
        view_names: one label per train view (file names), for the dropdown.
        lr_image_fn: view index -> its LR image [h, w, C>=3] (uint8 or float).
        sr_target_fn: view index -> its current SR target [H, W, 3], or None before the first swap.
        render_fn: view index -> a render of that train view [H', W', 3] at the current camera size.
        cameras: the train cameras (nerfstudio `Cameras`), for the frustums' fov/aspect when thumbnails change.
        upscale_factor: s; the side-by-side panels are s x the LR size.
    """

    def __init__(self, schedule: PhaseSchedule, view_names: Sequence[str], *,
                 lr_image_fn: Callable[[int], ImageLike],
                 sr_target_fn: Callable[[int], Optional[ImageLike]],
                 render_fn: Callable[[int], ImageLike],
                 cameras: Any = None, upscale_factor: int = 4, thumbnail_size: int = 100,
                 min_update_seconds: float = 0.5, compare_max_panel_width: int = 512, rate_window: int = 32) -> None:
        super().__init__()
        self.schedule = schedule
        self.upscale_factor = int(upscale_factor)
        self.thumbnail_size = int(thumbnail_size)
        self.min_update_seconds = float(min_update_seconds)
        self.compare_max_panel_width = int(compare_max_panel_width)
        # callables and state are private (leading "_"): nerfstudio's parse_object skips those names
        self._lr_image_fn, self._sr_target_fn, self._render_fn = lr_image_fn, sr_target_fn, render_fn
        self._cameras = cameras
        self._labels = [f"{i}: {name}" for i, name in enumerate(view_names)] or ["(no train views)"]
        self._index_from_label = {label: i for i, label in enumerate(self._labels)}
        self._trainer: Any = None
        self._attached = False
        self._pending_targets: Optional[torch.Tensor] = None
        self._last_mark: Optional[Tuple[int, float]] = None
        self._seconds_per_step: Deque[float] = deque(maxlen=rate_window)
        self._last_push = -math.inf
        self._last_phase: Optional[int] = None
        self._compare_shown: Optional[int] = None

        # nerfstudio lists elements in dir() (alphabetical) order: the numbers fix the order in the GUI
        self.gui_1_phase = ViewerText("3DSR phase", schedule.describe(0), disabled=True,
                                      hint="LR warm-up, then K denoise steps each followed by an HR phase")
        self.gui_2_phase_progress = ViewerProgressBar("3DSR phase progress")
        self.gui_3_run = ViewerText("3DSR run", f"0/{schedule.total_iterations} iterations (0%)", disabled=True)
        self.gui_4_eta = ViewerText("3DSR time left", "estimating...", disabled=True)
        self.gui_5_view = ViewerDropdown("Train view", self._labels[0], list(self._labels))
        self.gui_6_compare = ViewerButton("Show LR | SR target | render", cb_hook=lambda _: self.show_comparison())
        self.gui_7_image = ViewerMarkdown("3DSR side-by-side", "")

    @classmethod
    def for_pipeline(cls, pipeline: Any, **kwargs: Any) -> "ThreeDSRViewerPanel":
        """The panel of a ThreeDSRPipeline (duck-typed: schedule, config.upscale_factor, datamanager, model)."""
        dm = pipeline.datamanager
        names = [Path(str(f)).name for f in dm.train_dataset.image_filenames]

        def lr_image(i: int) -> ImageLike:
            return dm.cached_train[i]["image"]

        def sr_target(i: int) -> Optional[ImageLike]:
            return None if dm.sr_targets is None else dm.sr_targets[i]

        @torch.no_grad()
        def render(i: int) -> ImageLike:
            if hasattr(pipeline, "render_train_views"):
                return pipeline.render_train_views([i])[0].permute(1, 2, 0)
            with eval_mode(pipeline.model):
                return pipeline.model.get_outputs_for_camera(dm.train_dataset.cameras[i : i + 1])["rgb"]

        return cls(pipeline.schedule, names, lr_image_fn=lr_image, sr_target_fn=sr_target, render_fn=render,
                   cameras=dm.train_dataset.cameras, upscale_factor=pipeline.config.upscale_factor, **kwargs)

    # -- which viewer ---------------------------------------------------------------------------------------

    def attach(self, trainer: Any) -> None:
        """Remember the trainer (from get_training_callbacks); its `viewer_state` is looked up when needed."""
        self._trainer = trainer
        self._attached = True
        if self.viewer_state is None:
            self._pending_targets = None  # no viewer in this run: nothing to show later either

    @property
    def viewer_state(self) -> Any:
        """The trainer's nerfstudio (viser) Viewer, or None (no trainer, viewer off, or the legacy viewer)."""
        return _usable_viewer(getattr(self._trainer, "viewer_state", None))

    @property
    def installed(self) -> bool:
        """True once a viewer has installed the elements into its GUI."""
        return self.gui_1_phase.gui_handle is not None

    # -- progress -------------------------------------------------------------------------------------------

    @_never_raise
    def update_progress(self, step: int, schedule: Optional[PhaseSchedule] = None,
                        seconds_per_step: Optional[float] = None, guidance_seconds: Optional[float] = None,
                        force: bool = False) -> None:
        """Show where `step` (the iteration about to run) is in the schedule, and the time left.

        seconds_per_step: an estimate to use; default, the median over the last intervals between calls that
            did not contain a guidance step. guidance_seconds: cost of one denoise step (e.g.
            `mean_guidance_seconds(pipeline.guidance_log)`), added once per remaining step.
        Cheap enough to call every iteration: it measures, and pushes to the GUI at most every
        `min_update_seconds` (or when the phase changes, or `force`).
        """
        schedule = schedule or self.schedule
        now = time.perf_counter()
        self._measure(step, now, schedule)
        self._flush_pending_thumbnails()
        if not self.installed:
            return
        phase = schedule.phase_at(step)
        if not force and phase == self._last_phase and now - self._last_push < self.min_update_seconds:
            return
        self._last_push, self._last_phase = now, phase
        total = schedule.total_iterations
        if step >= total:
            self.gui_1_phase.value = f"done: {schedule.denoise_steps} denoise steps, {total} iterations"
            self.gui_2_phase_progress.value = 100.0
            self.gui_2_phase_progress.animated = False
            self.gui_3_run.value = f"{total}/{total} iterations (100%)"
            self.gui_4_eta.value = "finished"
            return
        if phase == 0:
            phase_start, phase_len = 0, schedule.warmup_iters
        else:
            phase_start, phase_len = schedule.guidance_step_start(phase), schedule.phase_iters
        done = step - phase_start
        self.gui_1_phase.value = f"{schedule.describe(step)} ({100.0 * done / phase_len:.0f}%)"
        self.gui_2_phase_progress.value = 100.0 * done / phase_len
        self.gui_2_phase_progress.animated = False
        self.gui_3_run.value = f"{step}/{total} iterations ({100.0 * step / total:.0f}%)"
        sps = seconds_per_step if seconds_per_step is not None else self.seconds_per_step
        if sps is None:
            self.gui_4_eta.value = "estimating..."
            return
        left_guidance = sum(1 for b in schedule.guidance_starts if b > step)
        phase_eta = (phase_len - done) * sps
        run_eta = (total - step) * sps + left_guidance * (guidance_seconds or 0.0)
        phase_name = "warm-up" if phase == 0 else "HR phase"
        text = f"{phase_name} {format_seconds(phase_eta)}, run {format_seconds(run_eta)}"
        if left_guidance and guidance_seconds is None:
            text += f" + {left_guidance} denoise step{'s' if left_guidance > 1 else ''}"
        self.gui_4_eta.value = text + f" ({1e3 * sps:.0f} ms/it)"

    @property
    def seconds_per_step(self) -> Optional[float]:
        """Median measured seconds per iteration, or None before two calls."""
        return statistics.median(self._seconds_per_step) if self._seconds_per_step else None

    def _measure(self, step: int, now: float, schedule: PhaseSchedule) -> None:
        if self._last_mark is not None:
            last_step, last_time = self._last_mark
            crossed_guidance = any(last_step < b <= step for b in schedule.guidance_starts)
            if step > last_step and not crossed_guidance:
                self._seconds_per_step.append((now - last_time) / (step - last_step))
        self._last_mark = (step, now)

    @_never_raise
    def on_guidance_start(self, k: int) -> None:
        """Say that denoise step k runs (minutes with the SD upscaler, during which no iteration ends)."""
        if not self.installed:
            return
        self.gui_1_phase.value = f"running denoise step {k}/{self.schedule.denoise_steps} (diffusion SR)..."
        self.gui_2_phase_progress.animated = True
        self._last_phase = None  # the next update_progress pushes at once

    # -- thumbnails -----------------------------------------------------------------------------------------

    @_never_raise
    def on_swap(self, sr_targets: torch.Tensor, viewer_state: Any = None) -> None:
        """After a swap: each train camera frustum shows its view's SR target ([N, H, W, 3] float, on the device).

        viewer_state: nerfstudio's Viewer (default: the attached trainer's). No viewer: no-op. Before the
        viewer has drawn its cameras (a resume loads SR targets before that), the update waits for the next
        `update_progress`; only a reference to the targets is kept.
        """
        viewer = _usable_viewer(viewer_state) if viewer_state is not None else self.viewer_state
        if self._compare_shown is not None and self.gui_7_image.gui_handle is not None:
            stale = "_Shown before the last swap: press the button again._\n\n"
            self.gui_7_image.value = stale + self.gui_7_image.value
            self._compare_shown = None
        if viewer is None:
            if not self._attached and viewer_state is None:
                self._pending_targets = sr_targets  # a viewer may still come (resume before the trainer is set up)
            return
        if not getattr(viewer, "camera_handles", None):
            self._pending_targets = sr_targets
            return
        self._pending_targets = None
        self._set_frustum_images(viewer, sr_targets)

    def _flush_pending_thumbnails(self) -> None:
        if self._pending_targets is None:
            return
        viewer = self.viewer_state
        if viewer is None:
            if self._attached:
                self._pending_targets = None
            return
        if getattr(viewer, "camera_handles", None):
            targets, self._pending_targets = self._pending_targets, None
            self._set_frustum_images(viewer, targets)

    def _set_frustum_images(self, viewer: Any, sr_targets: torch.Tensor) -> None:
        handles: Dict[int, Any] = viewer.camera_handles
        server: viser.ViserServer = viewer.viser_server
        indices = [i for i in handles if 0 <= i < sr_targets.shape[0]]
        thumbs = make_thumbnails(sr_targets.detach(), indices, self.thumbnail_size)
        scale = float(getattr(getattr(viewer, "config", None), "camera_frustum_scale", 0.1))
        fov_aspect = self._frustum_fov_aspect(indices, thumbs)
        with server.atomic():
            for i in indices:
                handles[i] = set_frustum_image(server, handles[i], thumbs[i], *fov_aspect[i], scale=scale)

    def _frustum_fov_aspect(self, indices: List[int], thumbs: Dict[int, np.ndarray]) -> Dict[int, Tuple[float, float]]:
        """nerfstudio's own formulas (viewer.init_scene): fov = 2 atan(cx / fx), aspect = cx / cy."""
        if self._cameras is None:
            return {i: (1.0, thumbs[i].shape[1] / thumbs[i].shape[0]) for i in indices}
        cx = self._cameras.cx.reshape(-1).detach().cpu().double()
        cy = self._cameras.cy.reshape(-1).detach().cpu().double()
        fx = self._cameras.fx.reshape(-1).detach().cpu().double()
        return {i: (float(2 * torch.atan(cx[i] / fx[i])), float(cx[i] / cy[i])) for i in indices}

    # -- side by side ---------------------------------------------------------------------------------------

    def selected_view(self) -> int:
        return self._index_from_label.get(self.gui_5_view.value, 0)

    @_never_raise
    @torch.no_grad()
    def show_comparison(self, view_index: Optional[int] = None) -> Optional[np.ndarray]:
        """Compose [LR nearest | SR target | render] for a train view (default: the dropdown's), show it in the
        panel and return it ([H, 3W + 4, 3] uint8; panels at s x LR, shrunk to `compare_max_panel_width`).

        Runs in viser's thread when the button is pressed; nerfstudio wraps element callbacks in the trainer's
        train_lock, so the render never overlaps a training iteration."""
        i = self.selected_view() if view_index is None else int(view_index)
        lr = self._lr_image_fn(i)
        sr = self._sr_target_fn(i)
        render = self._render_fn(i)
        if sr is not None:
            hr = tuple(int(d) for d in torch.as_tensor(sr).shape[:2])
        else:
            h, w = (int(d) for d in torch.as_tensor(lr).shape[:2])
            hr = (h * self.upscale_factor, w * self.upscale_factor)
        shrink = min(1.0, self.compare_max_panel_width / hr[1])
        size = (max(1, round(hr[0] * shrink)), max(1, round(hr[1] * shrink)))
        strip = compose_side_by_side(lr, sr, render, size)
        label = self._labels[i] if 0 <= i < len(self._labels) else str(i)
        caption = (f"**{label}**: LR (nearest x{self.upscale_factor}) | "
                   f"{'SR target' if sr is not None else 'no SR target yet (LR warm-up)'} | render")
        if self.gui_7_image.gui_handle is not None:
            self.gui_7_image.value = f"{caption}\n\n![LR | SR | render]({_jpeg_data_url(strip)})"
            self._compare_shown = i
        return strip


def _usable_viewer(viewer_state: Any) -> Any:
    """nerfstudio's viser Viewer, or None (the legacy viewer has another server type)."""
    if viewer_state is None or not isinstance(getattr(viewer_state, "viser_server", None), viser.ViserServer):
        return None
    return viewer_state


def set_frustum_image(server: viser.ViserServer, handle: Any, image: np.ndarray, fov: float, aspect: float,
                      scale: float = 0.1) -> Any:
    """Give a camera frustum a new image; returns the handle to keep (a new one under viser 0.2.7).

    viser 0.2.7 cannot change a frustum's image in place: add the frustum again under the same scene name with
    the old pose and visibility, and move its click callbacks (nerfstudio's "fly to this camera") over.
    """
    image_property = getattr(type(handle), "image", None)
    if isinstance(image_property, property) and image_property.fset is not None:  # newer viser
        handle.image = image
        return handle
    impl = handle._impl
    new = server.scene.add_camera_frustum(
        name=impl.name, fov=fov, aspect=aspect, scale=scale, image=image, format="jpeg",
        wxyz=handle.wxyz, position=handle.position, visible=handle.visible)
    for callback in list(impl.click_cb or []):
        new.on_click(callback)
    return new
