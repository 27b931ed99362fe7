"""Counts the block work a generation executes, whatever skips it: cachekern, diffusers' cache hooks,
cache-dit, or fewer steps.

Work is counted in FLOPs (torch's FlopCounterMode, measured once on a one-sample call) inside the
model's blocks: the transformer blocks of a DiT; the ResNet and attention blocks of a UNet. A cache
may skip a whole block (TeaCache, First-Block-Cache, DBCache, MagCache) or only modules inside one
(TaylorSeer predicts the attention and feed-forward outputs), so every module inside a block that
does FLOPs of its own gets a counting wrapper as its instance's `forward`, installed before any
cache is applied: a cache that skips a module never calls its forward, so only executed work is
counted. A call adds the module's own FLOPs per sample (its total minus its submodules') times the
call's batch size, so a call that computes only some samples counts as such.
"""

import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

from cachekern.models.blocks import cached_units, is_unet

def _own_flops(module, name, inclusive):
    """The module's FLOPs minus those of the nearest submodules that do FLOPs (looking through
    containers such as ModuleList, which are never called and count nothing themselves)."""
    def counted_children(mod, prefix):
        for child_name, child in mod.named_children():
            full = f"{prefix}.{child_name}"
            if inclusive.get(full, 0) > 0:
                yield full
            else:
                yield from counted_children(child, full)
    return inclusive.get(name, 0) - sum(inclusive[c] for c in counted_children(module, name))


def wrap_forwards(modules, make_wrapper):
    """Binds make_wrapper(index, module, forward) as each module instance's `forward`, inside
    its call: a cache that serves a block without running it (diffusers' hooks replace forward
    too, Block Caching wraps the whole call) leaves it uncounted. Returns the function that
    restores exactly what each instance held before."""
    previous = [module.__dict__.get("forward") for module in modules]
    for index, module in enumerate(modules):
        module.forward = make_wrapper(index, module, module.forward)

    def restore():
        for module, before in zip(modules, previous):
            module.__dict__.pop("forward", None)
            if before is not None:
                module.forward = before
    return restore


class BlockWork:
    """with BlockWork(model, one_sample_call) as work: ...; work.flops is the executed total."""

    def __init__(self, model, one_sample_call):
        self.model = model
        counter = FlopCounterMode(display=False)
        with counter:
            one_sample_call()
        prefix = type(model).__name__
        inclusive = {key[len(prefix) + 1:]: sum(ops.values())
                     for key, ops in counter.get_flop_counts().items()
                     if key.startswith(prefix + ".")}
        self.units = []   # (module, own FLOPs per sample)
        # The blocks Block Caching caches; in a UNet, its ResNet blocks as well as its attention
        # blocks.
        for unit in cached_units(model, resnets=is_unet(model)):
            for sub_name, sub in unit.module.named_modules(prefix=unit.name):
                own = _own_flops(sub, sub_name, inclusive)
                if own > 0:
                    self.units.append((sub, own))
        self.block_flops_per_sample = sum(own for _, own in self.units)
        if not self.units:
            raise RuntimeError("one_sample_call: ran none of the model's blocks")
        self.flops = 0

    def _counting(self, forward, per_sample):
        @functools.wraps(forward)   # keeps the signature, which cache-dit inspects
        def counted(*args, **kwargs):
            states = kwargs.get("hidden_states", args[0] if args else None)
            self.flops += per_sample * (states.shape[0] if isinstance(states, torch.Tensor) else 1)
            return forward(*args, **kwargs)
        return counted

    def __enter__(self):
        self._restore = wrap_forwards([module for module, _ in self.units],
                                      lambda i, module, forward:
                                      self._counting(forward, self.units[i][1]))
        return self

    def __exit__(self, *exc):
        self._restore()
        return False

    def reset(self):
        self.flops = 0
