"""What the reference models share: per-sample seeded noise, the CFG branch context, building a
diffusers model in a given dtype on a given device."""

import contextlib

import torch


def seeded_noise(seeds, shape, device, dtype) -> torch.Tensor:
    """One draw per seed, made on the CPU: sample i depends on seeds[i] alone, not on the batch it
    is generated in, the device, or the other samples' seeds."""
    if len(seeds) == 0:
        raise ValueError("seeds: expected at least one seed, got an empty sequence")
    draws = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(draws).to(device=device, dtype=dtype)


def branch(model, name):
    """diffusers pipelines name each CFG branch through the model's cache_context (caches keep
    one state per branch); a model without one (UNet2DConditionModel) gets no context."""
    context = getattr(model, "cache_context", None)
    return context(name) if context is not None else contextlib.nullcontext()


def check_labels(labels, num_classes) -> torch.Tensor:
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels: expected class indices in [0, {num_classes}), got "
                         f"{labels.tolist()}")
    return labels


def build(model_class, config, device="cpu", dtype=torch.float32):
    torch_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in the target dtype
    try:
        with torch.device(device):
            return model_class(**config)
    finally:
        torch.set_default_dtype(torch_dtype)
