"""`patch` / `unpatch` / `patched`: caching switched on and off per model instance, dispatching
on the policy to its method's handle. Both handles implement `Handle`."""

import contextlib
from typing import Protocol, runtime_checkable

import torch

from cachekern.block_caching import BlockCaching, BlockCachingHandle
from cachekern.models import adapter_for
from cachekern.models.binding import attach, detach, is_patched, resolve_model
from cachekern.teacache import TeaCache, TeaCacheHandle

POLICIES = (TeaCache, BlockCaching)


@runtime_checkable
class Handle(Protocol):
    """What `patch` returns: where a patched model's caching state lives."""

    history: list

    def stats(self) -> dict:
        """Counters of what ran and what was reused, and the bytes held between steps."""

    def reset(self) -> None:
        """Forgets the cached state: the next call starts a new generation."""

    def close(self) -> None:
        """Releases what the handle holds outside its state (called by unpatch)."""

    def forward(self, original_forward, args, kwargs):
        """One call of the patched model."""

    def cache_context(self, original, name, **kwargs):
        """The model's cache_context, noting the CFG branch a pipeline names."""


def patch(target, policy) -> Handle:
    """Switches caching on for a diffusers transformer or UNet (or a pipeline's) with `policy`:
    TeaCache returns a TeaCacheHandle, BlockCaching a BlockCachingHandle."""
    model = resolve_model(target)
    if not isinstance(policy, POLICIES):
        raise TypeError(f"cachekern.patch: policy must be one of "
                        f"{', '.join(p.__name__ for p in POLICIES)}, got {type(policy).__name__}")
    if is_patched(model):
        raise RuntimeError(f"cachekern.patch: this {type(model).__name__} is already patched; "
                           f"call cachekern.unpatch(model) first")
    check_dtype(model)
    through_pipeline = model is not target
    if isinstance(policy, BlockCaching):
        handle = BlockCachingHandle(model, policy)
    else:
        if policy.parity and not through_pipeline and policy.num_inference_steps is None:
            raise ValueError("cachekern.patch: TeaCache(parity=True) needs the step count (the "
                             "published algorithm always computes the last step): pass "
                             "num_inference_steps=..., or patch the pipeline, whose scheduler "
                             "gives it")
        handle = TeaCacheHandle(model, adapter_for(model), policy)
        if through_pipeline:
            handle.follow_pipeline(target)
    attach(model, handle)
    return handle


CACHED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_dtype(model):
    """The kernels compute in fp32/fp16/bf16: a model in another dtype is refused here, not at
    its first call."""
    param = next(model.parameters(), None)
    if param is not None and param.is_floating_point() and param.dtype not in CACHED_DTYPES:
        raise TypeError(f"cachekern.patch: the model's parameters are "
                        f"{str(param.dtype).replace('torch.', '')}; caching supports float32, "
                        f"float16 and bfloat16: convert the model with .to(torch.float32) first")


def unpatch(target) -> None:
    """Restores the model's own behaviour exactly."""
    model = resolve_model(target)
    if not is_patched(model):
        raise RuntimeError(f"cachekern.unpatch: this {type(model).__name__} is not patched")
    detach(model).close()


@contextlib.contextmanager
def patched(target, policy):
    """``with cachekern.patched(model, TeaCache()) as handle:`` patch, then unpatch on exit."""
    handle = patch(target, policy)
    try:
        yield handle
    finally:
        unpatch(target)
