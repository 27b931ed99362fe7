"""Recording a Block Caching profile: the model runs uncached through the calls a generation
makes while wrappers on its blocks observe every call (host reads are fine here: this is
calibration, not inference). The call tracking and the observed generations serve the fit too.

    prof = cachekern.profile(pipe, lambda: pipe(prompt, num_inference_steps=50), runs=4)
    prof.save("flux.profile")
"""

import contextlib
import math

import torch

from cachekern.block_caching.profile import Profile
from cachekern.models.binding import attach, detach, is_patched, resolve_model
from cachekern.models.blocks import cached_units, timestep_of, unit_inputs, wrap_calls
from cachekern.models.context_parallel import process_group, sum_across_ranks
from cachekern.models.branches import BranchNames
from cachekern.models.registry import adapter_for


def _timestep_value(args, kwargs):
    t = timestep_of(args, kwargs)
    if isinstance(t, torch.Tensor):
        return float(t.detach().float().reshape(-1)[0].item())
    return None if t is None else float(t)


class CallTracker:
    """Counts a model's calls per CFG branch (see cachekern.models.branches) while wrappers on its
    blocks observe them: `current` is (branch, step) during a call. Attached to the model the
    way cachekern.patch attaches a handle."""

    def __init__(self, model):
        self.model = model
        self._prefill_call = adapter_for(model).prefill_call
        self.current = None
        self.counts = {}
        self.timesteps = {}
        self._branches_named = BranchNames()

    def forward(self, original_forward, args, kwargs):
        if self._prefill_call(kwargs):      # no step: unobserved, not counted
            return original_forward(*args, **kwargs)
        branch = self._branches_named.branch()
        step = self.counts.get(branch, 0)
        self.timesteps.setdefault(branch, []).append(_timestep_value(args, kwargs))
        self.current = (branch, step)
        try:
            return original_forward(*args, **kwargs)
        finally:
            self.current = None
            self.counts[branch] = step + 1

    def cache_context(self, original, name, **kwargs):
        return self._branches_named.cache_context(original, name, **kwargs)

    @contextlib.contextmanager
    def installed(self):
        attach(self.model, self)
        try:
            yield self
        finally:
            detach(self.model)

    def start_generation(self):
        self.counts.clear()
        self.timesteps.clear()


@contextlib.contextmanager
def observing(units, observe):
    """Wraps each unit's call (a compiled block stays compiled): observe(index, unit, args,
    kwargs, result) after each call."""
    def wrap(index, module, call):
        def observed(*args, **kwargs):
            result = call(*args, **kwargs)
            observe(index, units[index], args, kwargs, result)
            return result
        return observed
    restore = wrap_calls([unit.module for unit in units], wrap)
    try:
        yield
    finally:
        restore()


def generations(tracker, units, observe, run, runs, after):
    """Calls run() `runs` times, uncached, with observe(...) after every cacheable unit's
    forward, and after(steps) once each generation has run (still observed, so that an error
    it raises leaves the model as it was)."""
    with torch.no_grad(), tracker.installed(), observing(units, observe):
        for _ in range(runs):
            tracker.start_generation()
            run()
            after(_steps_of(tracker))


def check_run(run, runs):
    if not callable(run):
        raise TypeError(f"run: expected a callable that generates once, got {type(run).__name__}")
    if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
        raise ValueError(f"runs: expected a positive int, got {runs!r}")


def _steps_of(tracker):
    counts = set(tracker.counts.values())
    if not counts:
        raise ValueError("run: the model was never called")
    if len(counts) != 1:
        raise ValueError(f"run: the CFG branches made different numbers of calls: "
                         f"{tracker.counts}")
    return counts.pop()


def profile(target, run, *, runs=1, resnets=False):
    """Records, for each cacheable block and step, the relative L1 change of the block's residual
    (output − input of its main stream) from the previous step, Σ|r_t − r_{t−1}| / Σ|r_t|
    (through the fused residual_capture), averaged over CFG branches and `runs` calls of `run`.
    The model runs uncached; each call of `run` must generate once, with the step count and
    scheduler the profile is for. resnets=True: a UNet's ResNet blocks too, not only its
    attention blocks."""
    check_run(run, runs)
    model = resolve_model(target)
    if is_patched(model):
        raise RuntimeError("profile: the model is patched; unpatch it first (profiles are "
                           "recorded on the uncached model)")
    from cachekern import kernels    # Triton loads with the first profile, not with cachekern
    units = cached_units(model, resnets)
    tracker = CallTracker(model)
    group = process_group(model)
    sums, counts, prev = {}, {}, {}
    timesteps = None
    steps = None

    def observe(index, unit, args, kwargs, result):
        if tracker.current is None:
            return
        branch, step = tracker.current
        x = unit_inputs(unit, args, kwargs)[unit.io.primary]
        out = unit.io.outputs(result)[unit.io.primary]
        key = (branch, index)
        last = prev.get(key)
        if last is not None and last.shape != out.shape:    # what is kept has out's shape
            last = None
        if out.shape == x.shape:
            residual, diff, cur = kernels.residual_capture(out.contiguous(), x.contiguous(), last)
        else:
            residual = out.detach().clone()
            cur = residual.float().abs().sum()
            diff = None if last is None else (residual.float() - last.float()).abs().sum()
        prev[key] = residual
        if diff is not None:
            cell = (index, step)
            pair = torch.stack([diff.sum().float(), cur.sum().float()])
            if group is not None:      # context parallelism: every rank's slice counts
                pair = sum_across_ranks(pair, group)
            sums[cell] = sums.get(cell, 0.0) + (pair[0] / pair[1]).item()
            counts[cell] = counts.get(cell, 0) + 1

    def after(n):
        nonlocal steps, timesteps
        prev.clear()           # residuals are compared within a generation only
        if steps is not None and n != steps:
            raise ValueError(f"run: generated {n} steps after {steps}; every run of a "
                             f"profile must use the same step count")
        steps = n
        if timesteps is None:
            timesteps = tracker.timesteps[sorted(tracker.timesteps)[0]]

    generations(tracker, units, observe, run, runs, after)
    change = [[(sums[(i, t)] / counts[(i, t)]) if (i, t) in counts else math.nan
               for t in range(steps)] for i in range(len(units))]
    return Profile(model_class=type(model).__name__, units=[u.name for u in units],
                   change=change, timesteps=timesteps, runs=runs,
                   branches=sorted(tracker.counts), resnets=resnets)


