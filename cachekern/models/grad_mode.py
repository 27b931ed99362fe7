"""Whether a model call records an autograd graph. A cached step has no gradient to give (its
output is a stored or forecast residual), so both methods run such a call uncached, with every
block computing, and say so once; pipelines generate under no_grad, where nothing changes."""

import itertools

import torch

from cachekern._warnings import warn


def builds_graph(model, args, kwargs) -> bool:
    """Gradients are enabled and a parameter or a tensor argument requires them."""
    if not torch.is_grad_enabled():
        return False
    if any(isinstance(a, torch.Tensor) and a.requires_grad
           for a in itertools.chain(args, kwargs.values())):
        return True
    return any(p.requires_grad for p in model.parameters())


def warn_uncached_with_gradients(method):
    warn(f"{method}: gradients are enabled, so the patched model runs this call uncached, every "
         f"block computing with gradients (a cached step would give none). To cache, call it "
         f"under torch.no_grad() or torch.inference_mode(), as diffusers pipelines do; "
         f"this warning is shown once per patch")
