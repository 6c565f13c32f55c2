"""Train the compact x4 SR diffusion prior that ships in the package (threedsr_ns/weights/compact_sr_x4/).

Three subcommands:

    pack    photos of ../shared/data/sr_train into one .npz the GPU machine reads (the 64 MiB it takes holds
            code, wheels, checkpoint and data together): by default the original JPEG bytes of a shard of the
            train photos (all 522: 38.5 MB; --num-shards 2: about 19 MB each), or --format crops (uint8 crops)
    train   one run (resumable): writes --out in the package layout + train_state.safetensors + train_log.jsonl
    export  copy config.json, model.safetensors and MODEL_CARD.md of a run folder into the package

CPU smoke run (seconds):

    python scripts/train_sr_prior.py train --out /tmp/sr_smoke --limit-photos 4 --crop-size 32 --batch-size 2 \\
        --block-out-channels 8 16 --layers-per-block 1 --norm-num-groups 4 --max-steps 5 --log-every 1

GPU runs (H100; at most 10 minutes per command, each resuming from the last checkpoint), from the repo root.
What travels is at most 64 MiB: code 0.5 MB + these wheels 6.6 MB + checkpoint 23.8 MB (EMA + online weights,
float16, 5.94 M parameters) + one shard 19.5 MB = about 50 MB; a first run has no checkpoint and takes both shards.

    # here, once: data packs (.data/ is git-ignored) and the wheels the GPU machine lacks
    python scripts/train_sr_prior.py pack --out .data/sr_pack/train_shard0.npz --num-shards 2 --shard 0  # 261 photos, 19.5 MB
    python scripts/train_sr_prior.py pack --out .data/sr_pack/train_shard1.npz --num-shards 2 --shard 1  # 261 photos, 19.1 MB
    python scripts/train_sr_prior.py pack --out .data/sr_pack/heldout.npz --split heldout                # 58 photos, 4.4 MB
    mkdir -p .whl-sr && cp .whl/diffusers-*.whl .whl/tyro-*.whl .whl/typeguard-*.whl \
        .whl/docstring_parser-*.whl .whl/pytorch_msssim-*.whl .whl-sr/ && echo /.whl-sr/ >> .git/info/exclude
    # every GPU command starts with
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-sr/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && ...
    # run 1 (carry .whl-sr .data/sr_pack/train_shard0.npz .data/sr_pack/train_shard1.npz):
    python3 scripts/train_sr_prior.py train --data .data/sr_pack/train_shard0.npz .data/sr_pack/train_shard1.npz \
        --out $OUT/ckpt --max-minutes 9
    # here: copy the returned ckpt folder to .data/sr_ckpt (writable); run 2 (carry .whl-sr, a shard, .data/sr_ckpt):
    python3 scripts/train_sr_prior.py train --data .data/sr_pack/train_shard0.npz --resume .data/sr_ckpt \
        --out $OUT/ckpt --max-minutes 9
    # last run: train a little shorter, then the held-out check in the same command (also carry heldout.npz):
    python3 scripts/train_sr_prior.py train --data .data/sr_pack/train_shard1.npz --resume .data/sr_ckpt \
        --out $OUT/ckpt --max-minutes 8 && python3 scripts/eval_sr_prior.py --model $OUT/ckpt \
        --data .data/sr_pack/heldout.npz --samplers ddpm:4 ddpm:50:noise --update-card --out $OUT/eval
    # finally, here (ships config.json, model.safetensors, MODEL_CARD.md; not the training state):
    python scripts/train_sr_prior.py export --checkpoint .data/sr_ckpt

--max-minutes counts from the start of the process (start-up, data decoding and the final save included).
A shipped folder has no training state; to go on training it (e.g. compact-v2, whose session-8 state did not come
back from the GPU machine), start from its weights and its card's history instead of --resume:

    python3 scripts/train_sr_prior.py train --init-from threedsr_ns/weights/compact_sr_x4_v2 \
        --data .data/sr_pack/train_shard0.npz .data/sr_pack/train_shard1.npz --out $OUT/ckpt --max-minutes 9 \
        --crop-size 160 --batch-size 24 --lr 4e-4 --warmup-steps 300 --channels-last

(compact-v2 also needs the Real-ESRGAN weights: THREEDSR_REALESRGAN_WEIGHTS or --rrdb-weights.) Without
--save-optimizer the returned state is two files of 12 MB, within what the GPU machine sends back.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's threedsr_ns without an install

import tyro  # noqa: E402

from threedsr_ns.sr_prior import data as data_lib  # noqa: E402
from threedsr_ns.sr_prior import train as train_lib  # noqa: E402


@dataclass
class Pack:
    out: Path
    """The .npz to write (put it under .data/, which git ignores, and name it in the device call's carry)."""
    data: Path = Path("../shared/data/sr_train")
    split: Literal["train", "heldout"] = "train"
    format: Literal["files", "crops"] = "files"
    """files: the photos' original JPEG bytes (lossless, smallest); crops: uint8 random crops, zlib-compressed."""
    shard: int = 0
    num_shards: int = 1
    """Shard i of n holds every n-th photo of the split (names sorted as in split.json)."""
    limit: Optional[int] = None
    """Only the first N photos of the shard."""
    crop_size: int = 128
    """format crops: side of the crops."""
    crops_per_photo: int = 1
    seed: int = 0


@dataclass
class Export:
    checkpoint: Path
    """A folder written by `train`."""
    to: Optional[Path] = None
    """Default: where the package loads the checkpoint's kind of prior from (compact_sr_x4 or compact_sr_x4_v2)."""


def main() -> None:
    command = "python scripts/train_sr_prior.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    args = tyro.extras.subcommand_cli_from_dict(
        {"train": train_lib.TrainConfig, "pack": Pack, "export": Export}, description=__doc__
    )
    if isinstance(args, Pack):
        meta = data_lib.write_pack(
            args.data, args.out, split=args.split, pack_format=args.format, shard=args.shard,
            num_shards=args.num_shards, limit=args.limit, crop_size=args.crop_size,
            crops_per_photo=args.crops_per_photo, seed=args.seed,
        )
        count = len(meta.get("crop_sources", meta["names"]))
        unit = "crops" if args.format == "crops" else "photos"
        print(f"packed {count} {unit} of the {args.split} split (shard {args.shard}/{args.num_shards}) into "
              f"{args.out}: {meta['bytes'] / 1e6:.1f} MB ({meta['bytes'] / 2**20:.1f} MiB)")
    elif isinstance(args, Export):
        for path in train_lib.export(args.checkpoint, args.to):
            print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    else:
        state = train_lib.train(args, command=command)
        last = state["runs"][-1]
        print(f"done: step {state['step']}, this run {last['steps_end'] - last['steps_start']} steps in "
              f"{last['train_s']:.0f} s ({last['steps_per_s']:.2f} steps/s); wrote {args.out}")


if __name__ == "__main__":
    main()
