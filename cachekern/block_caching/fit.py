"""Block Caching's closed-form scale-shift: per block, reused step and channel, the least-squares
scale and shift that best turn the residual a schedule reuses into the freshly computed one, from
uncached generations; stored in the profile for that schedule (BlockCaching(scale_shift="fit")).

    cachekern.fit_scale_shift(prof, pipe, lambda: pipe(prompt, num_inference_steps=50),
                              delta=0.5)
"""

import torch

from cachekern.block_caching.record import CallTracker, check_run, generations
from cachekern.models.binding import resolve_model
from cachekern.models.blocks import cached_units


def _residual(out, x):
    """What is cached for a block: out − x, or the output itself where the block changes the
    shape (a UNet ResNet block changing the width)."""
    return out - x if out.shape == x.shape else out


class ChannelFit:
    """Per-channel least squares of y ≈ scale · x + shift over rows, from running sums (float64),
    for x, y of shape [rows, C]: scale = cov(x, y) / var(x), shift = mean(y) − scale · mean(x);
    a channel where x does not vary gets scale 1."""

    def __init__(self):
        self.sums = None
        self.n = 0

    def add(self, x, y):
        x, y = x.double(), y.double()
        terms = (x.sum(0), y.sum(0), (x * x).sum(0), (x * y).sum(0))
        self.sums = list(terms) if self.sums is None else \
            [a + b for a, b in zip(self.sums, terms)]
        self.n += x.shape[0]

    def solve(self):
        sx, sy, sxx, sxy = self.sums
        n = self.n
        var = n * sxx - sx * sx
        usable = var > 1e-9 * (n * sxx).clamp_min(1e-300)
        scale = torch.where(usable, (n * sxy - sx * sy) / torch.where(usable, var, 1.0), 1.0)
        return scale, (sy - scale * sx) / n


def fit_scale_shift(profile, target, run, *, delta=0.5, target_compute=None, runs=1):
    """Closed-form least squares, per block, reused step and channel, of the freshly computed
    residual on the one the schedule would reuse (r_t ≈ scale · r_s + shift), over `runs`
    uncached generations. Stored in this profile for the schedule of (delta,
    target_compute); returns that schedule's key."""
    check_run(run, runs)
    model = resolve_model(target)
    schedule = profile.schedule(delta, target_compute)
    units = cached_units(model, profile.resnets)
    profile.check_units(units, "fit_scale_shift")
    tracker = CallTracker(model)
    stats, kept = {}, {}

    def observe(index, unit, args, kwargs, result):
        if tracker.current is None:
            return
        branch, step = tracker.current
        if step >= profile.steps:
            raise ValueError(profile.steps_error(step + 1))
        dim = unit.io.channel_dim
        for k, (x, out) in enumerate(zip(unit.io.inputs(args, kwargs),
                                         unit.io.outputs(result))):
            if out is None or x is None:
                continue
            r = _residual(out.float(), x.float()).movedim(dim, -1)
            r = r.reshape(-1, r.shape[-1])                       # [rows, C]
            if schedule[index][step]:
                kept[(branch, index, k)] = r
                continue
            fit = stats.setdefault((index, step, k), ChannelFit())
            fit.add(kept[(branch, index, k)], r)

    def after(steps):
        kept.clear()       # reused residuals come from the same generation only
        if steps != profile.steps:
            raise ValueError(profile.steps_error(steps))

    generations(tracker, units, observe, run, runs, after)
    params = {cell: tuple(t.float().cpu() for t in fit.solve())
              for cell, fit in stats.items()}
    return profile.store_scale_shift(schedule, "fit", params)

