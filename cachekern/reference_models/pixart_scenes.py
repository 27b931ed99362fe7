"""pixart-scenes: a small PixArtTransformer2DModel (adaLN-single) generating 32×32 RGB scenes of
shapes on textured backgrounds, drawn procedurally at training time (benchmarks/zoo/scenes.py),
so the model must generalise rather than recall. Class = the largest shape's kind × colour family
(20 classes), reaching the model as learned caption tokens; the last class index is the empty
condition (10% dropout in training), for CFG. Rectified flow, sampled on shifted sigmas as SD3 and
FLUX pipelines sample (the time variable is not uniform in the step index).

There is no VAE: the pixels are the latents (2×2 patches, 16×16 = 256 tokens). CFG is batched as
PixArt's pipelines run it: one call on [empty, cond].
"""

import torch
from torch import nn

from cachekern.reference_models.common import (FLOW_SCHEDULERS, build, check_labels, check_seeds,
                                               flow_sample, one_sample_call, seeded_noise)

NAME = "pixart-scenes"
NUM_CLASSES = 20
IMAGE_SIZE = 32
CHANNELS = 3
TEXT_TOKENS = 4
CONFIG = dict(sample_size=IMAGE_SIZE, num_layers=8, patch_size=2, attention_head_dim=32,
              num_attention_heads=6, caption_channels=64, in_channels=CHANNELS,
              out_channels=CHANNELS, cross_attention_dim=192, attention_bias=True,
              activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
              norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
              use_additional_conditions=False)
SAMPLING = dict(steps=28, guidance_scale=3.0, shift=3.0)
SCHEDULERS = FLOW_SCHEDULERS
NO_SIZE_CONDITION = {"resolution": None, "aspect_ratio": None}


class Conditioner(nn.Module):
    """Class label -> caption tokens; label NUM_CLASSES is the empty condition."""

    def __init__(self, num_classes=NUM_CLASSES, config=CONFIG):
        super().__init__()
        self.num_classes = num_classes
        self.text = nn.Parameter(torch.randn(num_classes + 1, TEXT_TOKENS,
                                             config["caption_channels"]))

    def forward(self, labels):
        return dict(encoder_hidden_states=self.text[labels])


def build_model(device="cpu", dtype=torch.float32, config=CONFIG):
    from diffusers import PixArtTransformer2DModel

    return build(PixArtTransformer2DModel, config, device, dtype)


def velocity(model, conditioner, images, sigma, labels):
    """The model's prediction of noise − image at noise level sigma ∈ [0, 1] (per sample); the
    model is called with timestep 1000·sigma, as flow-matching pipelines call it."""
    text = conditioner(labels)["encoder_hidden_states"].to(images.dtype)
    return model(images, encoder_hidden_states=text, timestep=(sigma * 1000).to(images.dtype),
                 added_cond_kwargs=NO_SIZE_CONDITION, return_dict=False)[0]


def example_call(model, conditioner, device):
    """One model call on one sample, as the sampler makes it."""
    return one_sample_call(velocity, model, conditioner, (CHANNELS, IMAGE_SIZE, IMAGE_SIZE),
                           device)


@torch.no_grad()
def sample(model, conditioner, labels, seeds, steps=SAMPLING["steps"],
           guidance_scale=SAMPLING["guidance_scale"], shift=SAMPLING["shift"], scheduler="euler"):
    """Images [B, 3, 32, 32] in [-1, 1]; `scheduler`: see common.flow_scheduler."""
    param = next(model.parameters())
    labels = check_labels(labels, conditioner.num_classes).to(param.device)
    check_seeds(seeds, labels)
    both = torch.cat([torch.full_like(labels, conditioner.num_classes), labels])

    def guided_velocity(x, level):
        v_empty, v = velocity(model, conditioner, torch.cat([x, x]), level.expand(len(both)),
                              both).chunk(2)
        return v_empty + guidance_scale * (v - v_empty)

    x = seeded_noise(seeds, (CHANNELS, IMAGE_SIZE, IMAGE_SIZE), param.device, param.dtype)
    return flow_sample(guided_velocity, x, steps, scheduler, shift).float().clamp(-1, 1)
