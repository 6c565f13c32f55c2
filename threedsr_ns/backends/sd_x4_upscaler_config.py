"""Architecture of `stabilityai/stable-diffusion-x4-upscaler`, as data.

Used to build the model with random weights (cost benchmarks, tests) where the weights cannot be
downloaded. Every value is derived from the original LDM config
(Stability-AI/stablediffusion, configs/stable-diffusion/x4-upscaling.yaml) through the rules of
diffusers' own converter (diffusers/loaders/single_file_utils.py, which also hard-codes the
low-res scheduler below):
- UNet: model_channels 256 x channel_mult [1, 2, 2, 4] -> block_out_channels; attention at
  downsample rates [2, 4, 8] -> DownBlock2D then three CrossAttnDownBlock2D;
  disable_self_attentions [T, T, T, F] -> only_cross_attention; num_heads 8 -> attention_head_dim
  8 (diffusers' name for the head count here); use_linear_in_transformer -> linear projection;
  num_classes 1000 -> num_class_embeds (the class label is the LR noise level); context_dim 1024.
- VAE: ch 128 x ch_mult [1, 2, 4] (three blocks: x4 downsampling, so the latent is at LR size),
  z_channels 4, 2 res blocks, scale_factor 0.08333.
- Scheduler: parameterization "v", linear_start 0.0001, linear_end 0.02 over 1000 steps (LDM's
  "linear" schedule is linear in sqrt(beta): diffusers' "scaled_linear"); diffusers ships it as
  a DDIMScheduler.
- Low-res (LR image noise augmentation) scheduler: same betas, max_noise_level 350.
- Text encoder: OpenCLIP ViT-H/14 text tower, penultimate layer -> a 23-layer, 1024-wide
  CLIPTextModel (diffusers drops resblock 23 when converting); embeddings [1, 77, 1024].
"""

from __future__ import annotations

from typing import Any

MODEL_ID = "stabilityai/stable-diffusion-x4-upscaler"

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 7,  # 4 latent + 3 (noised LR image, concatenated)
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (256, 512, 512, 1024),
    "layers_per_block": 2,
    "only_cross_attention": (True, True, True, False),
    "attention_head_dim": 8,
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "num_class_embeds": 1000,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}

VAE_CONFIG: dict[str, Any] = {
    "sample_size": 256,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "block_out_channels": (128, 256, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "scaling_factor": 0.08333,
}

SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "clip_sample": False,
    "set_alpha_to_one": False,
}

LOW_RES_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "variance_type": "fixed_small",
    "clip_sample": True,
}

MAX_NOISE_LEVEL = 350
DEFAULT_NOISE_LEVEL = 20  # StableDiffusionUpscalePipeline's default

# transformers.CLIPTextConfig kwargs; listed for completeness (random-weights mode needs no text
# encoder: its prompt embedding is a fixed random tensor of PROMPT_EMBEDS_SHAPE).
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 512,
}

PROMPT_EMBEDS_SHAPE = (1, 77, 1024)

# A few-channel model with the same block types, attention layout, class embedding and x4 VAE:
# fast on a CPU, for tests and end-to-end runs. Not a model of anything.
TINY_UNET_CONFIG: dict[str, Any] = {
    **UNET_CONFIG,
    "sample_size": 16,
    "block_out_channels": (16, 32, 32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
}

TINY_VAE_CONFIG: dict[str, Any] = {
    **VAE_CONFIG,
    "sample_size": 64,
    "block_out_channels": (8, 16, 16),
    "layers_per_block": 1,
    "norm_num_groups": 8,
}

TINY_PROMPT_EMBEDS_SHAPE = (1, 77, TINY_UNET_CONFIG["cross_attention_dim"])
