"""The FLOPs each of a model's cacheable blocks runs, counted by torch's FlopCounterMode over the
calls made while it is open: what weighs a per-block schedule's compute by work, since blocks
differ in cost (FLUX's single- and double-stream blocks, a UNet's ResNet and attention blocks)."""

import contextlib

from torch.utils.flop_counter import FlopCounterMode


@contextlib.contextmanager
def counting_unit_flops(model, units):
    """with counting_unit_flops(model, units) as flops: run the model; on exit `flops` holds
    each unit's FLOPs over those calls (its submodules' included), in the order of `units`."""
    counter = FlopCounterMode(display=False)
    flops = []
    with counter:
        yield flops
    # FlopCounterMode names a module by its path from the outermost module it saw called.
    counts = counter.get_flop_counts()
    prefix = type(model).__name__ + "."
    flops.extend(sum(counts.get(prefix + unit.name, {}).values()) for unit in units)
    if not any(flops):
        raise RuntimeError("counting_unit_flops: the calls ran none of the model's blocks")
