"""unet-digits: a small UNet2DConditionModel with cross-attention blocks generating scikit-learn's
handwritten digits upsampled to 32×32, one class per digit, trained for epsilon prediction (the
recipe is benchmarks/zoo/train.py); sampled with DDIM or DPM-Solver++, the settings of the Block
Caching paper. The class reaches the cross-attention as learned text-token embeddings; the last
class index is the empty condition (10% dropout in training), for CFG.
"""

import torch
from torch import nn

from cachekern.reference_models.common import build, check_labels, seeded_noise

NAME = "unet-digits"
DIGITS = tuple(str(d) for d in range(10))
NUM_CLASSES = len(DIGITS)
IMAGE_SIZE = 32
TEXT_TOKENS = 2
CONFIG = dict(sample_size=IMAGE_SIZE, in_channels=1, out_channels=1, layers_per_block=1,
              block_out_channels=(32, 64, 64), norm_num_groups=8,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
              cross_attention_dim=64, attention_head_dim=4)
NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear",
                      prediction_type="epsilon")
SCHEDULERS = ("ddim", "dpm++")
SAMPLING = dict(steps={"ddim": 50, "dpm++": 20}, guidance_scale=2.0)


class Conditioner(nn.Module):
    """Class label -> cross-attention tokens; label len(DIGITS) is the empty condition."""

    def __init__(self, num_classes=len(DIGITS), config=CONFIG):
        super().__init__()
        self.num_classes = num_classes
        self.text = nn.Parameter(torch.randn(num_classes + 1, TEXT_TOKENS,
                                             config["cross_attention_dim"]))

    def forward(self, labels):
        return dict(encoder_hidden_states=self.text[labels])


def build_model(device="cpu", dtype=torch.float32, config=CONFIG):
    from diffusers import UNet2DConditionModel

    return build(UNet2DConditionModel, config, device, dtype)


def example_call(model, conditioner, device):
    """One model call on one sample, as the sampler makes it."""
    dtype = next(model.parameters()).dtype
    x = torch.randn(1, 1, IMAGE_SIZE, IMAGE_SIZE, device=device, dtype=dtype)
    context = conditioner(torch.zeros(1, dtype=torch.long, device=device))
    return lambda: model(x, 500, encoder_hidden_states=context["encoder_hidden_states"].to(dtype))


def make_scheduler(name):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        return DDIMScheduler(**NOISE_SCHEDULE, clip_sample=False, set_alpha_to_one=True)
    if name == "dpm++":
        return DPMSolverMultistepScheduler(**NOISE_SCHEDULE, algorithm_type="dpmsolver++",
                                           solver_order=2)
    raise ValueError(f"scheduler: expected one of {SCHEDULERS}, got {name!r}")


@torch.no_grad()
def sample(model, conditioner, labels, seeds, steps=None, guidance_scale=SAMPLING["guidance_scale"],
           scheduler="ddim"):
    """Images [B, 1, 32, 32] in [-1, 1]; CFG batched as StableDiffusionPipeline runs it (one call
    on [empty, cond])."""
    solver = make_scheduler(scheduler)
    steps = SAMPLING["steps"][scheduler] if steps is None else steps
    param = next(model.parameters())
    labels = check_labels(labels, conditioner.num_classes).to(param.device)
    if len(seeds) != len(labels):
        raise ValueError(f"seeds: expected one per label ({len(labels)}), got {len(seeds)}")
    solver.set_timesteps(steps, device=param.device)
    x = seeded_noise(seeds, (1, IMAGE_SIZE, IMAGE_SIZE), param.device, param.dtype)
    both = torch.cat([torch.full_like(labels, conditioner.num_classes), labels])
    context = conditioner(both)["encoder_hidden_states"].to(param.dtype)
    for t in solver.timesteps:
        eps_empty, eps = model(torch.cat([x, x]), t, encoder_hidden_states=context,
                               return_dict=False)[0].chunk(2)
        x = solver.step(eps_empty + guidance_scale * (eps - eps_empty), t, x,
                        return_dict=False)[0]
    return x.float().clamp(-1, 1)
