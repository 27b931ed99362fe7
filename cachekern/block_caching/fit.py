"""Block Caching's closed-form scale-shift: per block, reused step and channel, the least-squares
scale and shift that best turn the residual a schedule reuses into the freshly computed one, from
uncached generations; stored in the profile for that schedule (BlockCaching(scale_shift="fit")).
With forecast_order = K - 1 > 0 the same regression has the block's last K computed residuals as
regressors (a fitted forecast: the extrapolation learned from the model's own runs).

    cachekern.fit_scale_shift(prof, pipe, lambda: pipe(prompt, num_inference_steps=50),
                              delta=0.5)
    cachekern.fit_scale_shift(prof, pipe, run, delta=0.5, forecast_order=1)
"""

import torch

from cachekern.block_caching.record import CallTracker, check_run, generations
from cachekern.models.binding import resolve_model
from cachekern.models.blocks import cached_units, unit_inputs
from cachekern.models.context_parallel import process_group, sum_across_ranks


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

    def reduce(self, group):
        """Sums every rank's rows in (context parallelism: each rank saw its own tokens)."""
        self.sums = [sum_across_ranks(t, group) for t in self.sums]
        self.n = int(sum_across_ranks(torch.tensor([float(self.n)], dtype=torch.float64,
                                                   device=self.sums[0].device), group).item())

    def solve(self):
        sx, sy, sxx, sxy = self.sums
        n = self.n
        var = n * sxx - sx * sx
        usable = var > 1e-9 * (n * sxx).clamp_min(1e-300)
        scale = torch.where(usable, (n * sxy - sx * sy) / torch.where(usable, var, 1.0), 1.0)
        return scale, (sy - scale * sx) / n


class MultiChannelFit:
    """Per-channel least squares of y ≈ sum_k w_k · x_k + b over rows, from running sums
    (float64), for K regressors x_k and y of shape [rows, C]; a tiny ridge keeps channels whose
    regressors are collinear solvable."""

    def __init__(self):
        self.gram = None     # [C, K + 1, K + 1]
        self.cross = None    # [C, K + 1]

    def add(self, xs, y):
        features = torch.stack([x.double() for x in xs] + [torch.ones_like(y, dtype=torch.float64)],
                               dim=-1)                                    # [rows, C, K + 1]
        gram = torch.einsum("rci,rcj->cij", features, features)
        cross = torch.einsum("rci,rc->ci", features, y.double())
        self.gram = gram if self.gram is None else self.gram + gram
        self.cross = cross if self.cross is None else self.cross + cross

    def reduce(self, group):
        """Sums every rank's rows in (context parallelism: each rank saw its own tokens)."""
        self.gram = sum_across_ranks(self.gram, group)
        self.cross = sum_across_ranks(self.cross, group)

    def solve(self):
        """(weights [K, C], shift [C])."""
        size = self.gram.shape[-1]
        ridge = 1e-9 * self.gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
        gram = self.gram + ridge[:, None, None] * torch.eye(size, dtype=torch.float64,
                                                           device=self.gram.device)
        solution = torch.linalg.solve(gram, self.cross)                  # [C, K + 1]
        return solution[:, :-1].T.contiguous(), solution[:, -1].contiguous()


def fit_scale_shift(profile, target, run, *, delta=0.5, target_compute=None, runs=1,
                    forecast_order=0):
    """Closed-form least squares, per block, reused step and channel, of the freshly computed
    residual on the one the schedule would reuse (r_t ≈ scale · r_s + shift), over `runs`
    uncached generations; with forecast_order > 0, on the block's last forecast_order + 1
    computed residuals (fewer where fewer were computed yet). Stored in this profile for the
    schedule of (delta, target_compute); returns that schedule's key."""
    check_run(run, runs)
    if isinstance(forecast_order, bool) or forecast_order not in (0, 1, 2):
        raise ValueError(f"forecast_order: expected 0, 1 or 2, got {forecast_order!r}")
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
        for k, (x, out) in enumerate(zip(unit_inputs(unit, args, kwargs),
                                         unit.io.outputs(result))):
            if out is None or x is None:
                continue
            r = _residual(out.float(), x.float()).movedim(dim, -1)
            r = r.reshape(-1, r.shape[-1])                       # [rows, C]
            if schedule[index][step]:    # the newest first, at most forecast_order + 1
                history = kept.setdefault((branch, index, k), [])
                history.insert(0, r)
                del history[forecast_order + 1:]
                continue
            history = kept[(branch, index, k)]
            if forecast_order == 0:
                stats.setdefault((index, step, k), ChannelFit()).add(history[0], r)
            else:
                stats.setdefault((index, step, k), MultiChannelFit()).add(history, r)

    def after(steps):
        kept.clear()       # reused residuals come from the same generation only
        if steps != profile.steps:
            raise ValueError(profile.steps_error(steps))

    generations(tracker, units, observe, run, runs, after)
    group = process_group(model)
    if group is not None:      # every rank the same cells, reduced in the same order
        for cell in sorted(stats):
            stats[cell].reduce(group)
    params = {cell: tuple(t.float().cpu() for t in fit.solve())
              for cell, fit in stats.items()}
    mode = "fit" if forecast_order == 0 else f"fit-order{forecast_order}"
    return profile.store_scale_shift(schedule, mode, params)

