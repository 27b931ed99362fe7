"""Binding a handle to one model instance: the denoiser found in a pipeline, and the handle's
forward (and cache_context, which tells it the CFG branch) bound as the instance's own, so the
class is never touched, two models of one class keep separate state, and detaching restores the
instance exactly. Used by patching and by the calibration tools that observe a model."""

import functools

_MARK = "_cachekern_patch"


def resolve_model(target):
    """The denoiser of a diffusers pipeline (its transformer or unet), or the model itself."""
    import torch

    if hasattr(target, "components") and getattr(target, "transformer_2", None) is not None:
        raise ValueError(f"target: this {type(target).__name__} has two denoisers (transformer "
                         f"and transformer_2, as Wan 2.2's experts): patch each one, "
                         f"cachekern.patch(pipe.transformer, policy) and "
                         f"cachekern.patch(pipe.transformer_2, policy); each keeps its own state")
    for name in ("transformer", "unet"):
        model = getattr(target, name, None)
        if model is not None and hasattr(target, "components"):
            target = model
            break
    if not isinstance(target, torch.nn.Module):
        raise TypeError(f"target: expected a diffusers pipeline, transformer or UNet (a "
                        f"torch.nn.Module), got {type(target).__name__}")
    return target


def is_patched(model) -> bool:
    return model.__dict__.get(_MARK) is not None


# diffusers' PeftAdapterMixin methods that change the weights a call runs with (a pipeline's
# load_lora_weights, fuse_lora, set_adapters, unload_lora_weights... reach the model through
# them). Cached state (residuals, CUDA graphs that baked in the old modules) is dropped after each.
WEIGHT_CHANGING_METHODS = ("load_lora_adapter", "add_adapter", "set_adapter", "set_adapters",
                           "fuse_lora", "unfuse_lora", "unload_lora", "delete_adapters",
                           "enable_lora", "disable_lora", "enable_adapters", "disable_adapters")
BOUND = ("forward", "cache_context") + WEIGHT_CHANGING_METHODS


def _resetting(method, handle):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        result = method(*args, **kwargs)
        handle.reset()
        return result
    return wrapper


def attach(model, handle) -> None:
    """Binds handle.forward(original_forward, args, kwargs) as the instance's forward, and
    handle.cache_context(original, name, **kwargs) as its cache_context where it has one; each
    LoRA method the model has resets the handle after it runs."""
    saved = {name: model.__dict__[name] for name in BOUND if name in model.__dict__}
    for name in WEIGHT_CHANGING_METHODS:
        method = getattr(model, name, None)
        if callable(method):
            model.__dict__[name] = _resetting(method, handle)
    original_forward = model.forward

    @functools.wraps(original_forward)
    def forward(*args, **kwargs):
        return handle.forward(original_forward, args, kwargs)

    model.forward = forward
    if hasattr(model, "cache_context"):
        original_context = model.cache_context
        model.cache_context = functools.partial(handle.cache_context, original_context)
    model.__dict__[_MARK] = (handle, saved)


def detach(model):
    """Undoes `attach` exactly; returns the handle."""
    handle, saved = model.__dict__.pop(_MARK)
    for name in BOUND:
        model.__dict__.pop(name, None)
        if name in saved:
            model.__dict__[name] = saved[name]
    return handle
