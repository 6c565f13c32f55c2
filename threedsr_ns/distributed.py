"""The guidance step over several processes of one host: the train views sharded by rank through torch.distributed.

Rank 0 is the training process (3DGS, viewer, checkpoints, as with one device). `GuidanceGroup.launch` spawns ranks
1..N-1 (torch.multiprocessing, start method spawn), each building a frozen copy of the SR backend with
`make_backend` on its own device: cuda:r over NCCL, or the CPU over gloo. At every guidance step rank 0

1. posts "step" in the group's TCPStore (workers wait there between steps, idle on the CPU: a 3DGS phase can last
   longer than any collective's timeout) and broadcasts the step's arguments as one int64 header and the timesteps;
2. sends each worker its shard of the per-view tensors (LR images, latents x_{t_(k-1)}, the images to step
   toward) with point-to-point isend/recv: shards differ in size by up to one batch, and p2p needs no padding;
3. runs the sampler step on its own shard meanwhile, then receives each worker's status, latents x_{t_k} and SR
   images (recv).

Shards are contiguous runs of whole backend batches (`shard_views`) and every view's noise comes from its own
generator (`guidance.view_generators`), so each view goes through exactly the computation of the one-process run:
the SR targets are bit-identical whatever N. Every process runs with NCCL_NVLS_ENABLE=0 (NVLink multicast off),
set before its process group starts. `close()` (after the last guidance step, at exit, or on an error) stops the
workers; a worker's exception comes back to rank 0 as a one-line error.
"""

from __future__ import annotations

import atexit
import os
import socket
import time
import traceback
from contextlib import nullcontext
from datetime import timedelta
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from threedsr_ns import guidance

ENVIRONMENT = {"NCCL_NVLS_ENABLE": "0"}
"""Set in every process of the group before its process group starts (NVLink multicast off)."""
STARTUP_TIMEOUT = timedelta(minutes=20)
"""How long rank 0 waits for the workers to build their backends (the SD x4 weights load from disk)."""
OP_TIMEOUT = timedelta(hours=2)
"""Timeout of one collective or p2p transfer: a worker's shard of a guidance step must finish within it."""
IDLE_TIMEOUT = timedelta(days=30)
"""How long a worker waits in the store for the next guidance step (a 3DGS phase)."""

_START_MODES: Tuple[str, ...] = ("noised_lr", "noise")
_POSTERIORS: Tuple[str, ...] = ("ddpm", "ddim")
_HEADER = ("k", "num_timesteps", "start_mode", "posterior", "color_fix", "seed", "num_views", "align", "has_latents",
           "has_toward", "scale", "lr_h", "lr_w", "lat_c", "lat_h", "lat_w")
"""The fields of a step's int64 header, in order."""


def shard_views(num_views: int, world_size: int, align: int = 1) -> List[range]:
    """The views of each rank: contiguous, balanced runs of whole batches of `align` views (the last batch may be
    short). Rank r gets batches [r * q + min(r, e), ...) of the ceil(num_views / align) batches, q and e the quotient
    and remainder over world_size; a rank may get none when there are fewer batches than ranks."""
    if world_size < 1 or align < 1 or num_views < 0:
        raise ValueError(f"shard_views needs num_views >= 0, world_size >= 1 and align >= 1, got {num_views}, "
                         f"{world_size}, {align}")
    batches = -(-num_views // align)
    per_rank, extra = divmod(batches, world_size)
    shards, start = [], 0
    for rank in range(world_size):
        stop = start + per_rank + (rank < extra)
        shards.append(range(min(start * align, num_views), min(stop * align, num_views)))
        start = stop
    return shards


def check_guidance_devices(num_devices: int, device: torch.device | str) -> None:
    """One-line ValueError when `--pipeline.guidance-devices` cannot be honoured on `device`."""
    device = torch.device(device)
    if num_devices < 1:
        raise ValueError(f"--pipeline.guidance-devices must be >= 1, got {num_devices}")
    if num_devices == 1:
        return
    if device.type == "cuda":
        available = torch.cuda.device_count()
        if num_devices > available:
            raise ValueError(f"--pipeline.guidance-devices {num_devices} asks for {num_devices} GPUs but this machine "
                             f"has {available} (torch.cuda.device_count()); pass --pipeline.guidance-devices "
                             f"{max(available, 1)} or fewer")
        if (device.index or 0) != 0:
            raise ValueError(f"--pipeline.guidance-devices {num_devices} needs training on cuda:0 (the workers take "
                             f"cuda:1..cuda:{num_devices - 1}), got {device}")
    elif device.type != "cpu":
        raise ValueError(f"--pipeline.guidance-devices {num_devices} runs on CUDA (NCCL) or the CPU (gloo), not on "
                         f"{device}; pass --pipeline.guidance-devices 1")
    if dist.is_initialized():
        raise ValueError(f"--pipeline.guidance-devices {num_devices} starts its own process group, but one is already "
                         "running (--machine.num-devices > 1?); pass --machine.num-devices 1")


def _apply_environment() -> None:
    os.environ.update(ENVIRONMENT)


def _comm_backend(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:500]


# -- rank 0 ---------------------------------------------------------------------------------------------


class GuidanceGroup:
    """Rank 0's handle on the group: `launch`, then `sampler_step` at every guidance step, then `close`."""

    def __init__(self, world_size: int, device: torch.device, store: dist.TCPStore, context) -> None:
        """Use `launch`."""
        self.world_size = world_size
        self.device = device
        """Where rank 0's transfers happen: its CUDA device (NCCL) or the CPU (gloo)."""
        self._store = store
        self._context = context
        self._steps = 0
        self._open = True
        atexit.register(self.close)

    @classmethod
    def launch(cls, world_size: int, backend_kwargs: Dict, device: torch.device | str) -> "GuidanceGroup":
        """Spawn ranks 1..world_size-1, each building `make_backend(**backend_kwargs)` on its device, wait until
        they are ready and start the process group (NCCL on CUDA, gloo on the CPU)."""
        device = torch.device(device)
        check_guidance_devices(world_size, device)
        if world_size < 2:
            raise ValueError("a GuidanceGroup needs at least 2 processes")
        _apply_environment()
        port = _free_port()
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=True, timeout=STARTUP_TIMEOUT,
                              wait_for_workers=False)
        context = mp.start_processes(_worker_main, args=(world_size, port, backend_kwargs, device.type,
                                                         torch.get_num_threads()),
                                     nprocs=world_size - 1, join=False, daemon=True, start_method="spawn")
        group = cls(world_size, device if device.type == "cuda" else torch.device("cpu"), store, context)
        try:
            group._wait_ready()
            dist.init_process_group(_comm_backend(device.type), store=store, rank=0, world_size=world_size,
                                    timeout=OP_TIMEOUT)
        except BaseException:
            group._terminate()
            raise
        return group

    def _wait_ready(self) -> None:
        keys = [f"ready/{rank}" for rank in range(1, self.world_size)]
        deadline = time.monotonic() + STARTUP_TIMEOUT.total_seconds()
        while not self._store.check(keys):
            try:
                self._context.join(timeout=0.2)  # raises with the worker's traceback when one died
            except Exception as err:
                raise RuntimeError(f"a guidance worker died while starting: {_one_line(err)}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"guidance workers not ready after {STARTUP_TIMEOUT}; see their output above")
        for rank, key in enumerate(keys, start=1):
            status = self._store.get(key).decode()
            if status != "ok":
                raise RuntimeError(f"guidance worker {rank} could not build the SR backend: {status}")

    @torch.no_grad()
    def sampler_step(self, backend, timesteps: Sequence[int], k: int, lr: torch.Tensor, lr_up: torch.Tensor,
                     seed: int, *, scale: int, start_mode: guidance.StartMode = "noised_lr",
                     posterior: guidance.StepKind = "ddpm", color_fix: bool = True,
                     latents: Optional[torch.Tensor] = None, toward: Optional[torch.Tensor] = None,
                     timer: Optional[Callable[[str], ContextManager]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """threedsr_ns.sampler.sampler_step for every view, sharded over the group (rank 0 runs shard 0 with
        `backend`); the views' noise from `guidance.view_generators(seed, k, ...)`. Results on lr's device."""
        from threedsr_ns.sampler import sampler_step

        if not self._open:
            raise RuntimeError("the guidance group is closed")
        n = lr.shape[0]
        align = max(int(getattr(backend, "batch_size", 1)), 1)
        shards = shard_views(n, self.world_size, align)
        needs_previous = k > 1 and backend.is_diffusion
        latents = latents if needs_previous else None
        toward = toward if needs_previous else None
        lat_shape = tuple(latents.shape[1:]) if latents is not None else (0, 0, 0)
        header = dict(k=k, num_timesteps=len(timesteps), start_mode=_START_MODES.index(start_mode),
                      posterior=_POSTERIORS.index(posterior), color_fix=int(color_fix), seed=seed, num_views=n,
                      align=align, has_latents=int(latents is not None), has_toward=int(toward is not None),
                      scale=scale, lr_h=lr.shape[-2], lr_w=lr.shape[-1], lat_c=lat_shape[0], lat_h=lat_shape[1],
                      lat_w=lat_shape[2])
        self._steps += 1
        self._store.set(f"command/{self._steps}", "step")
        try:
            dist.broadcast(torch.tensor([header[f] for f in _HEADER], dtype=torch.int64, device=self.device), src=0)
            dist.broadcast(torch.tensor(list(timesteps), dtype=torch.int64, device=self.device), src=0)
            sends = []
            for rank in range(1, self.world_size):
                views = shards[rank]
                if not len(views):
                    continue
                for tensor in (lr, latents, toward):
                    if tensor is not None:
                        part = tensor[views.start : views.stop].to(self.device, torch.float32).contiguous()
                        sends.append((dist.isend(part, dst=rank), part))
            own = shards[0]
            x_t, sr = sampler_step(backend, timesteps, k, lr[own.start : own.stop], lr_up[own.start : own.stop],
                                   guidance.view_generators(seed, k, own), start_mode=start_mode, posterior=posterior,
                                   color_fix=color_fix,
                                   latents=None if latents is None else latents[own.start : own.stop],
                                   toward=None if toward is None else toward[own.start : own.stop], timer=timer)
            with (timer or (lambda name: nullcontext()))("gather"):
                for work, _ in sends:
                    work.wait()
                x_parts, sr_parts = [x_t.float()], [sr]
                for rank in range(1, self.world_size):
                    count = len(shards[rank])
                    if not count:
                        continue
                    self._raise_on_error(rank)
                    x_part = torch.empty((count, *x_t.shape[1:]), dtype=torch.float32, device=self.device)
                    sr_part = torch.empty((count, *sr.shape[1:]), dtype=torch.float32, device=self.device)
                    dist.recv(x_part, src=rank)
                    dist.recv(sr_part, src=rank)
                    x_parts.append(x_part.to(lr.device))
                    sr_parts.append(sr_part.to(lr.device))
        except BaseException:
            self._terminate()
            raise
        return torch.cat(x_parts), torch.cat(sr_parts)

    def _raise_on_error(self, rank: int) -> None:
        status = torch.zeros(2, dtype=torch.int64, device=self.device)
        dist.recv(status, src=rank)
        if int(status[0]) != 0:
            message = torch.empty(int(status[1]), dtype=torch.uint8, device=self.device)
            dist.recv(message, src=rank)
            raise RuntimeError(f"guidance worker {rank} failed: {bytes(message.cpu().tolist()).decode()}")

    def close(self) -> None:
        """Stop the workers and the process group (idempotent; also runs at exit)."""
        if not self._open:
            return
        self._open = False
        atexit.unregister(self.close)
        self._store.set(f"command/{self._steps + 1}", "stop")
        deadline = time.monotonic() + 60
        try:
            while not self._context.join(timeout=1) and time.monotonic() < deadline:
                pass
        except Exception:  # a worker that failed: its traceback is in its output; terminate the rest below
            pass
        self._terminate()

    def _terminate(self) -> None:
        """Stop the workers now (those this group started) and the process group: after an error, or in close."""
        self._open = False
        atexit.unregister(self.close)
        for process in self._context.processes:
            if process.is_alive():
                process.terminate()
        for process in self._context.processes:
            process.join(timeout=10)
        if dist.is_initialized():
            dist.destroy_process_group()


# -- ranks 1..N-1 -----------------------------------------------------------------------------------------


def _worker_main(index: int, world_size: int, port: int, backend_kwargs: Dict, device_type: str,
                 threads: int) -> None:
    """The spawn target of rank index + 1: build the backend, join the group, serve guidance steps until stopped."""
    _apply_environment()
    rank = index + 1
    store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=STARTUP_TIMEOUT)
    try:
        if device_type == "cuda":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
            torch.set_num_threads(threads)
        from threedsr_ns.backends import make_backend

        backend = make_backend(**{**backend_kwargs, "device": device})
        backend.to(device)  # resident: this device does no 3DGS
    except Exception as err:
        store.set(f"ready/{rank}", _one_line(err))
        raise
    store.set(f"ready/{rank}", "ok")
    dist.init_process_group(_comm_backend(device_type), store=store, rank=rank, world_size=world_size,
                            timeout=OP_TIMEOUT)
    try:
        step = 0
        while True:
            step += 1
            key = f"command/{step}"
            store.wait([key], IDLE_TIMEOUT)
            if store.get(key).decode() != "step":
                break
            _serve_step(backend, rank, world_size, device)
    finally:
        dist.destroy_process_group()


@torch.no_grad()
def _serve_step(backend, rank: int, world_size: int, device: torch.device) -> None:
    from threedsr_ns.colorfix import bicubic_upsample
    from threedsr_ns.sampler import sampler_step

    header_tensor = torch.empty(len(_HEADER), dtype=torch.int64, device=device)
    dist.broadcast(header_tensor, src=0)
    h = dict(zip(_HEADER, header_tensor.tolist()))
    timesteps_tensor = torch.empty(h["num_timesteps"], dtype=torch.int64, device=device)
    dist.broadcast(timesteps_tensor, src=0)
    timesteps = timesteps_tensor.tolist()
    views = shard_views(h["num_views"], world_size, h["align"])[rank]
    n = len(views)
    if not n:
        return
    lr = torch.empty((n, 3, h["lr_h"], h["lr_w"]), dtype=torch.float32, device=device)
    dist.recv(lr, src=0)
    latents = toward = None
    if h["has_latents"]:
        latents = torch.empty((n, h["lat_c"], h["lat_h"], h["lat_w"]), dtype=torch.float32, device=device)
        dist.recv(latents, src=0)
    if h["has_toward"]:
        s = h["scale"]
        toward = torch.empty((n, 3, s * h["lr_h"], s * h["lr_w"]), dtype=torch.float32, device=device)
        dist.recv(toward, src=0)
    try:
        x_t, sr = sampler_step(backend, timesteps, h["k"], lr, bicubic_upsample(lr, h["scale"]),
                               guidance.view_generators(h["seed"], h["k"], views),
                               start_mode=_START_MODES[h["start_mode"]], posterior=_POSTERIORS[h["posterior"]],
                               color_fix=bool(h["color_fix"]), latents=latents, toward=toward)
    except Exception as err:
        traceback.print_exc()
        message = torch.tensor(list(_one_line(err).encode()), dtype=torch.uint8, device=device)
        dist.send(torch.tensor([1, message.numel()], dtype=torch.int64, device=device), dst=0)
        dist.send(message, dst=0)
        raise
    dist.send(torch.zeros(2, dtype=torch.int64, device=device), dst=0)
    dist.send(x_t.float().contiguous(), dst=0)
    dist.send(sr.float().contiguous(), dst=0)
