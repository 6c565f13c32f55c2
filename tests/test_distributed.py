"""The guidance step sharded by view over processes (threedsr_ns.distributed): gloo, 2 CPU processes, real fern."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from threedsr_ns.backends import make_backend
from threedsr_ns.colorfix import bicubic_upsample
from threedsr_ns.distributed import check_guidance_devices, shard_views
from threedsr_ns.guidance import view_generators
from threedsr_ns.pipeline import ThreeDSRPipelineConfig
from threedsr_ns.sampler import sampler_step

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("views", "ranks", "align"), [(17, 2, 6), (120, 4, 8), (3, 4, 1), (0, 2, 3), (9, 1, 4),
                                                       (50, 3, 7), (1, 3, 8)])
def test_shards_are_contiguous_balanced_runs_of_whole_batches(views: int, ranks: int, align: int):
    shards = shard_views(views, ranks, align)
    assert len(shards) == ranks
    assert [v for shard in shards for v in shard] == list(range(views))  # contiguous, in order, each view once
    assert all(shard.start % align == 0 for shard in shards if len(shard))  # a shard starts on a batch boundary
    batches = [-(-len(shard) // align) for shard in shards]
    assert max(batches) - min(batches) <= 1 and batches == sorted(batches, reverse=True)


def test_shards_of_the_documented_cases():
    assert shard_views(17, 2, 6) == [range(0, 12), range(12, 17)]
    assert [len(s) for s in shard_views(120, 4, 8)] == [32, 32, 32, 24]
    with pytest.raises(ValueError, match="world_size >= 1"):
        shard_views(5, 0)


def test_more_guidance_devices_than_gpus_is_one_line_naming_the_fix():
    with pytest.raises(ValueError, match=rf"has {torch.cuda.device_count()} \(torch.cuda.device_count\(\)\); pass "
                                         r"--pipeline.guidance-devices"):
        check_guidance_devices(torch.cuda.device_count() + 2, "cuda")
    with pytest.raises(ValueError, match=">= 1"):
        check_guidance_devices(0, "cpu")
    check_guidance_devices(2, "cpu")  # gloo processes on the CPU


def test_a_views_sr_does_not_depend_on_the_views_batched_with_it(tiny_fern: Path, one_torch_thread):
    """Per-view generators through whole sampler steps of the tiny SD x4 (whose LR conditioning is noisy too): 3 views
    together equal the same views one at a time. Up to rounding only: the CPU convolutions' low bits depend on the
    batch size, which is why threedsr_ns.distributed shards whole batches (and the gloo test below is bit for bit)."""
    from threedsr_ns.evaluation import read_image

    lr = torch.stack([read_image(p) for p in sorted((tiny_fern / "images").glob("*"))[:3]]).permute(0, 3, 1, 2)
    lr = lr[:, :, :16, :20].contiguous()
    lr_up = bicubic_upsample(lr, 4)
    backend = make_backend("tiny-random", device="cpu", batch_size=3)
    timesteps = backend.denoise_timesteps(2)
    x1, sr1 = sampler_step(backend, timesteps, 1, lr, lr_up, view_generators(3, 1, range(3)))
    x2, sr2 = sampler_step(backend, timesteps, 2, lr, lr_up, view_generators(3, 2, range(3)), latents=x1, toward=sr1)
    backend.batch_size = 1
    for i in range(3):
        one = slice(i, i + 1)
        xi, sri = sampler_step(backend, timesteps, 1, lr[one], lr_up[one], view_generators(3, 1, [i]))
        torch.testing.assert_close(xi, x1[one], rtol=0, atol=1e-5)
        torch.testing.assert_close(sri, sr1[one], rtol=0, atol=1e-5)
        _, sri = sampler_step(backend, timesteps, 2, lr[one], lr_up[one], view_generators(3, 2, [i]),
                              latents=x1[one], toward=sr1[one])
        torch.testing.assert_close(sri, sr2[one], rtol=0, atol=1e-5)
    assert (sr2 - sr1).abs().mean() > 1e-3  # the second step really changed the images


def make_pipeline(data: Path, guidance_devices: int):
    config = ThreeDSRPipelineConfig(sr_backend="tiny-random", warmup_iters=10, denoise_steps=3, phase_iters=5,
                                    guidance_batch_size=6, save_artifacts=False, guidance_devices=guidance_devices)
    config.datamanager.data = data
    config.model.random_init, config.model.num_random = True, 300
    torch.manual_seed(0)  # the same random initial Gaussians: the renders the 3dsr steps move toward agree
    return config.setup(device="cpu", test_mode="val")


def test_two_gloo_processes_give_the_one_process_sr_targets_bit_for_bit(tiny_fern: Path, one_torch_thread):
    single = make_pipeline(tiny_fern, 1)
    sharded = make_pipeline(tiny_fern, 2)
    try:
        group = sharded.guidance_group
        assert group is not None and group.world_size == 2
        workers, previous = list(group._context.processes), None
        for k in (1, 2, 3):  # step 1 from the noised LR, steps 2 and 3 toward the renders (3dsr)
            single.run_guidance_step(k, step=10 + 5 * (k - 1))
            sharded.run_guidance_step(k, step=10 + 5 * (k - 1))
            assert torch.equal(sharded.datamanager.sr_targets, single.datamanager.sr_targets), k
            if k < 3:
                assert torch.equal(sharded.latents, single.latents), k
            else:  # no sampler step is left: both free the sampler state
                assert sharded.latents is None and single.latents is None
            if previous is not None:
                assert (sharded.datamanager.sr_targets - previous).abs().mean() > 1e-3
            previous = sharded.datamanager.sr_targets.clone()
            assert "gather" in sharded.guidance_log[-1]
        assert sharded.guidance_group is None  # closed after the last step
        assert all(p.exitcode == 0 for p in workers)  # the worker stopped cleanly
    finally:
        sharded.close_guidance_group()


def test_multi_gpu_benchmark_refuses_in_one_line_without_the_gpus(tmp_path: Path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark_multi_gpu.py"), "--data", str(tmp_path),
                             "--gpus", "1", "2"], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]  # (after any third-party import warnings)
    assert "Traceback" not in result.stderr and "needs 2 GPUs" in last and "found 0" in last, result.stderr
    assert not (tmp_path / "multi-gpu.json").exists() and not result.stdout.strip()


def test_a_worker_that_cannot_build_its_backend_fails_the_launch_in_one_line(tmp_path: Path):
    """A guidance worker whose SR model does not load (here: a compact-prior folder without weights) must stop the
    launch, before any training, with one line naming the worker and the missing file, and leave no process behind."""
    from threedsr_ns.distributed import GuidanceGroup

    folder = tmp_path / "no_weights"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "threedsr-compact-sr"}')
    kwargs = dict(name="compact", model_path=str(folder), seed=0, batch_size=1, scale=4)
    with pytest.raises(RuntimeError) as error:
        GuidanceGroup.launch(2, kwargs, "cpu")
    message = str(error.value)
    assert "\n" not in message and "guidance worker 1" in message and "model.safetensors" in message
    import torch.distributed as dist

    assert not dist.is_initialized()  # nothing half-started is left for the training process
