"""flux-photos: a small FluxTransformer2DModel generating 64×64 RGB crops of scikit-image's bundled
photographs, one class per photograph, trained with rectified flow (the training recipe is
benchmarks/zoo/train.py).

There is no VAE: 4×4 pixel patches are the tokens (16×16 = 256 image tokens of 48 channels),
placed on a 2-D grid through Flux's rotary image ids. The class reaches the model the way a
prompt would: as learned text-token embeddings (encoder_hidden_states) and a learned pooled
vector; the last class index is the empty condition (trained with 10% dropout), for CFG.
"""

import torch
from torch import nn

from cachekern.reference_models.common import (FLOW_SCHEDULERS, build, check_labels,
                                               check_seeds, flow_sample, flow_scheduler,
                                               one_sample_call, seeded_noise, two_call_guidance)

NAME = "flux-photos"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
          "hubble_deep_field", "camera", "moon")   # class i = skimage.data.<PHOTOS[i]>()
NUM_CLASSES = len(PHOTOS)
IMAGE_SIZE = 64
PATCH = 4
CHANNELS = 3
GRID = IMAGE_SIZE // PATCH
TEXT_TOKENS = 4
CONFIG = dict(patch_size=1, in_channels=CHANNELS * PATCH * PATCH, num_layers=2,
              num_single_layers=6, attention_head_dim=32, num_attention_heads=4,
              joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False,
              axes_dims_rope=[8, 12, 12])
SAMPLING = dict(steps=28, guidance_scale=2.0, shift=1.0)
SCHEDULERS = FLOW_SCHEDULERS


class Conditioner(nn.Module):
    """Class label -> (text tokens, pooled vector); label len(PHOTOS) is the empty condition."""

    def __init__(self, num_classes=len(PHOTOS), config=CONFIG):
        super().__init__()
        self.num_classes = num_classes
        self.text = nn.Parameter(torch.randn(num_classes + 1, TEXT_TOKENS,
                                             config["joint_attention_dim"]))
        self.pooled = nn.Parameter(torch.randn(num_classes + 1, config["pooled_projection_dim"]))

    def forward(self, labels):
        return dict(encoder_hidden_states=self.text[labels], pooled_projections=self.pooled[labels])


def build_model(device="cpu", dtype=torch.float32, config=CONFIG):
    from diffusers import FluxTransformer2DModel

    return build(FluxTransformer2DModel, config, device, dtype)


def pack(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, 64, 64] -> [B, 256, 48] tokens, row-major over the patch grid."""
    b = images.shape[0]
    x = images.reshape(b, CHANNELS, GRID, PATCH, GRID, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, GRID * GRID, CHANNELS * PATCH * PATCH)


def unpack(tokens: torch.Tensor) -> torch.Tensor:
    b = tokens.shape[0]
    x = tokens.reshape(b, GRID, GRID, CHANNELS, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)


def image_ids(device) -> torch.Tensor:
    ids = torch.zeros(GRID, GRID, 3, device=device)
    ids[..., 1] = torch.arange(GRID, device=device)[:, None]
    ids[..., 2] = torch.arange(GRID, device=device)[None, :]
    return ids.reshape(-1, 3)


def velocity(model, conditioner, tokens, sigma, labels):
    """The model's prediction of noise − image at noise level sigma ∈ [0, 1] (per sample)."""
    cond = conditioner(labels)
    return model(hidden_states=tokens, timestep=sigma.to(tokens.dtype),
                 encoder_hidden_states=cond["encoder_hidden_states"].to(tokens.dtype),
                 pooled_projections=cond["pooled_projections"].to(tokens.dtype),
                 img_ids=image_ids(tokens.device),
                 txt_ids=torch.zeros(TEXT_TOKENS, 3, device=tokens.device),
                 return_dict=False)[0]


def example_call(model, conditioner, device):
    """One model call on one sample, as the sampler makes it."""
    return one_sample_call(velocity, model, conditioner, (GRID * GRID, model.config.in_channels),
                           device)


def make_scheduler(name, shift=SAMPLING["shift"]):
    return flow_scheduler(name, shift)


@torch.no_grad()
def sample(model, conditioner, labels, seeds, steps=SAMPLING["steps"],
           guidance_scale=SAMPLING["guidance_scale"], shift=SAMPLING["shift"], scheduler="euler"):
    """Images [B, 3, 64, 64] in [-1, 1]: `scheduler` (see make_scheduler), true CFG as
    FluxPipeline runs it (a "cond" and an "uncond" call per step, each in its cache_context)."""
    param = next(model.parameters())
    labels = check_labels(labels, conditioner.num_classes).to(param.device)
    check_seeds(seeds, labels)
    guided_velocity = two_call_guidance(model, velocity, conditioner, labels, guidance_scale)
    x = pack(seeded_noise(seeds, (CHANNELS, IMAGE_SIZE, IMAGE_SIZE), param.device, param.dtype))
    return unpack(flow_sample(guided_velocity, x, steps, scheduler, shift)).float().clamp(-1, 1)
