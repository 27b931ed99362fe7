"""One uncached pass recording what both methods calibrate on, so that a calibration seed costs
one generation rather than one per method (cachekern.tune): TeaCache's stack residuals and input
and output changes (its polynomial, searched schedules, replayed decisions) and Block Caching's
profile with each block's FLOPs.

The model runs under the never-skipping TeaCache that TeaCache's calibration uses; wrappers on
the blocks record the profile, each observation attributed to the branch and step of the call
whose stack is running. Blocks that run outside TeaCache's stack (before its decision) are
not observed there: for such a model the profile is recorded in a pass of its own. The blocks'
FLOPs are counted on the first call of each branch replayed on the bare model afterwards
(TeaCache's indicator runs part of block 0 outside its call; every call of a branch has the
same shapes)."""

from dataclasses import dataclass

import torch

from cachekern.block_caching import Profile
from cachekern.block_caching.record import BlockChanges, observing, profile
from cachekern.models.binding import resolve_model
from cachekern.models.blocks import cached_units
from cachekern.models.flops import counting_unit_flops
from cachekern.models.graphable import static_copy
from cachekern.teacache.calibrate import ChangeRecorder
from cachekern.teacache.schedule_search import record_residuals_and_changes


@dataclass
class Calibration:
    records: list             # (generation, branch, step, time, stack residual) per call
    changes: ChangeRecorder   # TeaCache's input and output changes
    profile: Profile          # Block Caching's
    weights: list             # each cacheable unit's FLOPs over the pass, in the profile's order
    generations: int          # the uncached generations this took


def record_both(target, run, seeds, resnets=False) -> Calibration:
    """`run(seed)` (generates once) for each of `seeds`, recorded for both methods; a model
    with blocks outside TeaCache's stack takes a second pass for the profile."""
    seeds = list(seeds)

    def runs(between=lambda: None):
        order = iter(seeds)

        def one():
            between()
            return run(next(order))
        return one

    if not callable(run):
        raise TypeError(f"run: expected a callable run(seed) that generates once, got "
                        f"{type(run).__name__}")
    model = resolve_model(target)
    units = cached_units(model, resnets)
    blocks = BlockChanges(model, units, resnets)
    handles, seen = [], {}       # seen: the current generation's timesteps per branch

    def position():
        return handles[0].call_in_progress() if handles else None

    def end_generation():
        if not seen:
            return
        if len({len(times) for times in seen.values()}) != 1:
            raise ValueError(f"run: the CFG branches made different numbers of calls: "
                             f"{ {branch: len(times) for branch, times in seen.items()} }")
        first = seen[sorted(seen)[0]]
        blocks.end_generation(len(first), first)
        seen.clear()

    arguments, first_calls = [None], {}

    def keep_arguments(module, args, kwargs):
        arguments[0] = static_copy((args, kwargs))   # as they were: latents change in place

    def on_call(generation, handle, call, output):
        seen.setdefault(call["branch"], []).append(call["timestep"])
        first_calls.setdefault(call["branch"], arguments[0])

    hook = model.register_forward_pre_hook(keep_arguments, with_kwargs=True)
    try:
        with torch.no_grad(), observing(units, blocks.observer(position)):
            # A generation ends where the next begins (its first blocks compare with nothing).
            records, changes = record_residuals_and_changes(target, runs(end_generation),
                                                            len(seeds), "tune",
                                                            also=on_call,
                                                            attached=handles.append)
    finally:
        hook.remove()
    end_generation()
    prof, spent = blocks.profile(), len(seeds)
    if any(all(change != change for change in row) for row in prof.change):
        # A unit TeaCache's stack does not run (it ran before the decision): no profile here.
        with counting_unit_flops(model, units) as weights:
            prof = profile(target, runs(), runs=len(seeds), resnets=resnets)
        return Calibration(records, changes, prof, list(weights), spent + len(seeds))
    with torch.no_grad(), counting_unit_flops(model, units) as weights:
        for args, kwargs in first_calls.values():
            model(*args, **kwargs)
    return Calibration(records, changes, prof, list(weights), spent)

