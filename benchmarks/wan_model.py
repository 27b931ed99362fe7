"""WanTransformer3DModel at Wan2.1-T2V-14B's dimensions (diffusers' config of
Wan-AI/Wan2.1-T2V-14B-Diffusers) with random weights, and its inputs at a video size, for the GPU
benchmarks; "small" is a few-block stand-in that checks a script on the CPU."""

import torch

CONFIGS = {
    "14b": dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128,
                in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824,
                num_layers=40, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6),
    "small": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                  in_channels=4, out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64,
                  num_layers=4, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6),
}
# Latents [B, C, frames, height, width] (VAE: 4× in time, 8× in space), and text tokens.
SIZES = {
    "720p": dict(latents=(1, 16, 21, 90, 160), text_tokens=512),    # 1280×720, 81 frames
    "480p": dict(latents=(1, 16, 21, 60, 104), text_tokens=512),    # 832×480, 81 frames
    "small": dict(latents=(1, 4, 3, 8, 8), text_tokens=7),
}


def build(config, device):
    """The model in bf16 on a GPU (fp32 on the CPU), made in that dtype directly: 14B parameters
    made in fp32 first would not fit beside their bf16 copy."""
    from diffusers import WanTransformer3DModel

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            torch.manual_seed(0)
            return WanTransformer3DModel(**CONFIGS[config]).eval()
    finally:
        torch.set_default_dtype(previous)


def inputs(model, size, device, seed=1):
    """(latents, text embeddings) for `size`, in the model's dtype."""
    spec = SIZES[size]
    dtype = next(model.parameters()).dtype
    g = torch.Generator(device).manual_seed(seed)
    latents = torch.randn(spec["latents"], generator=g, device=device, dtype=dtype)
    text = torch.randn(1, spec["text_tokens"], model.config.text_dim, generator=g, device=device,
                       dtype=dtype)
    return latents, text
