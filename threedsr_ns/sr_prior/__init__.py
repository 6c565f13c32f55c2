"""Training and held-out evaluation of the compact x4 SR diffusion prior (`threedsr_ns.backends.compact`).

    data.py      photos of ../shared/data/sr_train (its split.json), packs for the GPU machine, crops, LR synthesis
    train.py     the training loop, EMA, resumable checkpoints in the package layout, the log, the model card
    sampling.py  per-frame SR with 3DSR's K-step sampler (or a plain DDPM / DDIM sampler), for any SR backend
    metrics.py   PSNR / SSIM, the high-frequency energy ratio, the spread across seeds
    evaluate.py  the held-out check: JSON, Markdown table, crops figure, model-card section

The scripts `scripts/train_sr_prior.py` and `scripts/eval_sr_prior.py` are thin command lines over these.
Nothing here imports nerfstudio: the GPU machine only needs torch, diffusers, safetensors, numpy, Pillow,
pytorch_msssim and tyro.
"""
