"""Pictures for people: each guidance step's SR targets as PNG, and contact sheets.

A contact sheet has one row per train view (the first `max_views`) and four columns:
    LR input (nearest-upsampled) | per-frame SR of step 1 | current SR target | current render
so a glance shows what the 3D guidance changed between the independent per-frame SR and now.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

COLUMNS = ("LR input", "per-frame SR (step 1)", "SR target now", "render now")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] or [N, H, W, 3] float in [0, 1] -> [N, H, W, 3] uint8 on the CPU."""
    if images.shape[1] == 3 and images.shape[-1] != 3:
        images = images.permute(0, 2, 3, 1)
    return (images.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


PNG_COMPRESS_LEVEL = 1
"""zlib level of the pictures: ~3x faster than PIL's default 6 for 2016x1512 photos, ~7% larger
(benchmarks/results/artifact-writes-cpu.json)."""

SAVE_THREADS = min(4, os.cpu_count() or 1)
"""Views encoded at once (PIL releases the GIL while it encodes)."""


def save_sr_targets(folder: Path, targets: torch.Tensor | np.ndarray, names: Sequence[str],
                    compress_level: int = PNG_COMPRESS_LEVEL, threads: int = SAVE_THREADS) -> None:
    """One PNG per train view, named after its input image (targets: float as for to_uint8, or uint8 [N, H, W, 3])."""
    folder.mkdir(parents=True, exist_ok=True)
    images = targets if isinstance(targets, np.ndarray) else to_uint8(targets)

    def save(i: int) -> None:
        Image.fromarray(images[i]).save(folder / f"{Path(names[i]).stem}.png", compress_level=compress_level)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(save, range(min(len(images), len(names)))))  # list(): a failed write is raised here


class ArtifactWriter:
    """Writes the pictures on a background thread, so that training does not wait for PNG encoding (LLFF fern's 17
    views at 2016x1512: ~3 s on a 2-core CPU, benchmarks/results/artifact-writes-cpu.json). submit() first waits for
    the previous submit's pictures (they had a whole HR phase to be written; so one step's copy at most waits in
    memory, and a failed write is raised in the training thread, naming the file), then copies the targets to the CPU
    and queues them: training may swap in new targets at once. wait() returns once everything queued is on disk."""

    def __init__(self) -> None:
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pending: List[Future] = []
        self.last_targets_folder: Optional[Path] = None
        """The folder of the last targets submitted: a folder for unchanged targets links its PNGs."""

    def submit(self, sheet_path: Path, sheet: Image.Image, targets_folder: Optional[Path] = None,
               targets: Optional[torch.Tensor] = None, names: Sequence[str] = ()) -> None:
        """Queue a contact sheet and, with a targets_folder, every view's SR target as <targets_folder>/<name>.png:
        `targets` (float in [0, 1], [N, 3, H, W] or [N, H, W, 3], any device) are encoded; without them the targets
        are those of the last submit's folder, whose PNGs are hard-linked (copied where links fail), not encoded
        again."""
        self.wait()
        images = None if targets is None else to_uint8(targets)
        source = None
        if targets_folder is not None:
            if images is None:
                if self.last_targets_folder is None:
                    raise ValueError(f"{targets_folder}: no SR targets were written yet to link; pass the targets")
                source = self.last_targets_folder
            self.last_targets_folder = targets_folder
        if self._pool is None:  # interpreter exit joins the thread: what is queued is written even if training stops
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="3dsr-artifacts")
        self._pending.append(self._pool.submit(_write, sheet_path, sheet, targets_folder, images, tuple(names), source))

    def wait(self) -> None:
        """Block until every queued picture is written; raise the first failed write."""
        pending, self._pending = self._pending, []
        errors = [job.exception() for job in pending]  # exception() waits for its job
        for error in errors:
            if error is not None:
                raise error


def link_or_copy(src: Path, dst: Path) -> None:
    """`dst` (replaced if there) as a hard link to `src`, or a copy of it where the file system cannot link."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def link_sr_targets(source: Path, folder: Path, names: Sequence[str]) -> None:
    """<folder>/<name>.png as a hard link to (where the file system cannot link: a copy of) <source>/<name>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        link_or_copy(source / f"{Path(name).stem}.png", folder / f"{Path(name).stem}.png")


def _write(sheet_path: Path, sheet: Image.Image, folder: Optional[Path], targets: Optional[np.ndarray],
           names: Sequence[str], source: Optional[Path] = None) -> None:
    writes = [(sheet_path, lambda: sheet.save(sheet_path, compress_level=PNG_COMPRESS_LEVEL))]
    if folder is not None and targets is not None:
        writes.insert(0, (folder, lambda: save_sr_targets(folder, targets, names)))
    elif folder is not None and source is not None:
        writes.insert(0, (folder, lambda: link_sr_targets(source, folder, names)))
    for path, write in writes:
        try:
            write()
        except OSError as error:
            raise OSError(f"{path}: could not write the 3dsr pictures ({error}); free disk space, or train with "
                          "--pipeline.save-artifacts False") from error


def contact_sheet(lr: torch.Tensor, sr_first: torch.Tensor, sr_now: torch.Tensor, render: torch.Tensor,
                  max_views: int = 8, cell_width: int = 320) -> Image.Image:
    """All inputs [N, 3, ., .] in [0, 1]; lr at LR size, the others at HR size. Returns an RGB image."""
    n = min(max_views, lr.shape[0])
    hr_h, hr_w = sr_now.shape[-2:]
    cell_h = round(cell_width * hr_h / hr_w)
    lr_up = F.interpolate(lr[:n].float(), size=(hr_h, hr_w), mode="nearest")  # nearest: show the real LR pixels
    columns = [lr_up, sr_first[:n], sr_now[:n], render[:n]]
    cells = [F.interpolate(c.float(), size=(cell_h, cell_width), mode="area") for c in columns]
    header = 18
    sheet = Image.new("RGB", (cell_width * len(columns), header + cell_h * n), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (title, column) in enumerate(zip(COLUMNS, cells)):
        draw.text((j * cell_width + 4, 3), title, fill="black")
        for i, image in enumerate(to_uint8(column)):
            sheet.paste(Image.fromarray(image), (j * cell_width, header + i * cell_h))
    return sheet
