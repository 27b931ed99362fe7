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


FLOW_SCHEDULERS = ("euler", "dpm++", "unipc")


def flow_scheduler(name, shift):
    """A rectified-flow sampler as diffusers pipelines build one: flow-matching Euler (FLUX, SD3,
    PixArt-style shifted sigmas), or DPM-Solver++(2M) / UniPC on flow sigmas (Wan's default):
    one model call a step each, the second-order solvers a scheduler swap away for a user."""
    from diffusers import (DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler,
                           UniPCMultistepScheduler)

    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    flow = dict(num_train_timesteps=1000, use_flow_sigmas=True, flow_shift=shift,
                prediction_type="flow_prediction", solver_order=2)
    if name == "dpm++":
        return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", **flow)
    if name == "unipc":
        return UniPCMultistepScheduler(**flow)
    raise ValueError(f"scheduler: expected one of {FLOW_SCHEDULERS}, got {name!r}")


def flow_sample(guided_velocity, x, steps, scheduler, shift):
    """Integrates a rectified flow from noise `x` with `scheduler` (see flow_scheduler);
    `guided_velocity(x, level)` is the guided prediction of noise − data at noise level `level`
    (a 0-d tensor in [0, 1])."""
    solver = flow_scheduler(scheduler, shift)
    solver.set_timesteps(steps, device=x.device)
    for i, t in enumerate(solver.timesteps):
        # The multistep solvers' timesteps are rounded to integers; their sigmas are exact.
        level = t / 1000 if scheduler == "euler" else solver.sigmas[i].to(x.device)
        x = solver.step(guided_velocity(x, level), t, x, return_dict=False)[0]
    return x


def check_seeds(seeds, labels):
    if len(seeds) != len(labels):
        raise ValueError(f"seeds: expected one per label ({len(labels)}), got {len(seeds)}")


def two_call_guidance(model, velocity, conditioner, labels, guidance_scale):
    """guided_velocity(x, level) for flow_sample, with CFG as FluxPipeline and WanPipeline run it:
    a "cond" and an "uncond" call per step, each in its cache_context. `velocity(model,
    conditioner, x, sigma, labels)` is the recipe's model call."""
    empty = torch.full_like(labels, conditioner.num_classes)

    def guided_velocity(x, level):
        sigma = level.expand(len(labels))
        with branch(model, "cond"):
            v = velocity(model, conditioner, x, sigma, labels)
        if guidance_scale == 1.0:
            return v
        with branch(model, "uncond"):
            v_empty = velocity(model, conditioner, x, sigma, empty)
        return v_empty + guidance_scale * (v - v_empty)
    return guided_velocity


def one_sample_call(velocity, model, conditioner, shape, device):
    """A callable making one model call on one sample of `shape` at noise level 0.5, class 0, as
    a flow recipe's sampler makes it (what BlockWork counts)."""
    dtype = next(model.parameters()).dtype
    x = torch.randn(1, *shape, device=device, dtype=dtype)
    sigma = torch.full((1,), 0.5, device=device)
    label = torch.zeros(1, dtype=torch.long, device=device)
    return lambda: velocity(model, conditioner, x, sigma, label)
