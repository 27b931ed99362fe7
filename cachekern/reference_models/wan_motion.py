"""wan-motion: a small WanTransformer3DModel generating 9-frame 32×32 RGB clips of a shape moving
along a smooth random path (slide, orbit, spin or pulse) while its colour drifts, drawn
procedurally at training time (benchmarks/zoo/motion.py). Class = motion kind × shape kind
(16 classes), reaching the model as learned text tokens; the last class index is the empty
condition (10% dropout in training), for CFG. Rectified flow, sampled as WanPipeline samples:
UniPC on shifted flow sigmas, a "cond" and an "uncond" call per step, each in its cache_context.

There is no VAE: the pixels are the latents (1×2×2 patches, 9×16×16 = 2,304 tokens).
"""

import torch
from torch import nn

from cachekern.reference_models.common import (FLOW_SCHEDULERS, build, check_labels, check_seeds,
                                               flow_sample, one_sample_call, seeded_noise,
                                               two_call_guidance)

NAME = "wan-motion"
NUM_CLASSES = 16
FRAMES = 9
IMAGE_SIZE = 32
CHANNELS = 3
TEXT_TOKENS = 4
CONFIG = dict(patch_size=[1, 2, 2], num_attention_heads=6, attention_head_dim=32,
              in_channels=CHANNELS, out_channels=CHANNELS, text_dim=64, freq_dim=128,
              ffn_dim=768, num_layers=6, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
              eps=1e-6, rope_max_seq_len=64)
SAMPLING = dict(steps=30, guidance_scale=3.0, shift=3.0)
SCHEDULERS = ("unipc", "euler", "dpm++")     # Wan's pipelines sample with UniPC


class Conditioner(nn.Module):
    """Class label -> text tokens; label NUM_CLASSES is the empty condition."""

    def __init__(self, num_classes=NUM_CLASSES, config=CONFIG):
        super().__init__()
        self.num_classes = num_classes
        self.text = nn.Parameter(torch.randn(num_classes + 1, TEXT_TOKENS, config["text_dim"]))

    def forward(self, labels):
        return dict(encoder_hidden_states=self.text[labels])


def build_model(device="cpu", dtype=torch.float32, config=CONFIG):
    from diffusers import WanTransformer3DModel

    return build(WanTransformer3DModel, config, device, dtype)


def velocity(model, conditioner, clips, sigma, labels):
    """The model's prediction of noise − clip at noise level sigma ∈ [0, 1] (per sample), called
    with timestep 1000·sigma as WanPipeline calls it."""
    text = conditioner(labels)["encoder_hidden_states"].to(clips.dtype)
    return model(hidden_states=clips, timestep=(sigma * 1000).to(clips.dtype),
                 encoder_hidden_states=text, return_dict=False)[0]


def example_call(model, conditioner, device):
    """One model call on one sample, as the sampler makes it."""
    return one_sample_call(velocity, model, conditioner,
                           (CHANNELS, FRAMES, IMAGE_SIZE, IMAGE_SIZE), device)


@torch.no_grad()
def sample(model, conditioner, labels, seeds, steps=SAMPLING["steps"],
           guidance_scale=SAMPLING["guidance_scale"], shift=SAMPLING["shift"], scheduler="unipc"):
    """Clips [B, 3, 9, 32, 32] in [-1, 1]; `scheduler`: see common.flow_scheduler."""
    param = next(model.parameters())
    labels = check_labels(labels, conditioner.num_classes).to(param.device)
    check_seeds(seeds, labels)
    guided_velocity = two_call_guidance(model, velocity, conditioner, labels, guidance_scale)
    x = seeded_noise(seeds, (CHANNELS, FRAMES, IMAGE_SIZE, IMAGE_SIZE), param.device, param.dtype)
    return flow_sample(guided_velocity, x, steps, scheduler, shift).float().clamp(-1, 1)
