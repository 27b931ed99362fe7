"""`patch` / `unpatch` / `patched`: caching switched on and off per model instance.

Patching binds a wrapper as the *instance's* `forward` (and `cache_context`, to learn the CFG
branch from diffusers pipelines); the class is never touched, so two models of one class keep
separate state, and `unpatch` restores the instance exactly.
"""

import contextlib
import functools

from cachekern.adapters import adapter_for
from cachekern.block_caching_handle import BlockCachingHandle
from cachekern.handle import CacheHandle
from cachekern.policies import BlockCaching, TeaCache

_MARK = "_cachekern_patch"
POLICIES = (TeaCache, BlockCaching)


def resolve_model(target):
    """The denoiser of a diffusers pipeline (its transformer or unet), or the model itself."""
    for name in ("transformer", "unet"):
        model = getattr(target, name, None)
        if model is not None and hasattr(target, "components"):
            return model
    return target


def is_patched(model) -> bool:
    return model.__dict__.get(_MARK) is not None


def patch(target, policy) -> CacheHandle:
    """Switches caching on for a diffusers transformer (or a pipeline's) with `policy`."""
    model = resolve_model(target)
    if not isinstance(policy, POLICIES):
        raise TypeError(f"cachekern.patch: policy must be one of "
                        f"{', '.join(p.__name__ for p in POLICIES)}, got {type(policy).__name__}")
    if is_patched(model):
        raise RuntimeError(f"cachekern.patch: this {type(model).__name__} is already patched; "
                           f"call cachekern.unpatch(model) first")
    if isinstance(policy, BlockCaching):
        handle = BlockCachingHandle(model, policy)
    else:
        handle = CacheHandle(model, adapter_for(model), policy)
    attach(model, handle)
    return handle


def attach(model, handle) -> None:
    """Binds handle.forward(original_forward, args, kwargs) as the instance's forward, and
    handle.cache_context(original, name, **kwargs) as its cache_context where it has one."""
    saved = {name: model.__dict__[name] for name in ("forward", "cache_context")
             if name in model.__dict__}
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
    for name in ("forward", "cache_context"):
        model.__dict__.pop(name, None)
        if name in saved:
            model.__dict__[name] = saved[name]
    return handle


def unpatch(target) -> None:
    """Restores the model's own behaviour exactly."""
    model = resolve_model(target)
    if not is_patched(model):
        raise RuntimeError(f"cachekern.unpatch: this {type(model).__name__} is not patched")
    handle = detach(model)
    close = getattr(handle, "close", None)
    if close is not None:         # Block Caching's wrappers on the blocks
        close()


@contextlib.contextmanager
def patched(target, policy):
    """``with cachekern.patched(model, TeaCache()) as handle:`` patch, then unpatch on exit."""
    handle = patch(target, policy)
    try:
        yield handle
    finally:
        unpatch(target)
