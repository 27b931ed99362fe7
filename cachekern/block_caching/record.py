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


class BlockChanges:
    """What a profile averages, accumulated while the model runs uncached: for each cacheable
    block and step, the relative L1 change of the block's residual (output − input of its
    main stream) from the previous step, Σ|r_t − r_{t−1}| / Σ|r_t| (through the fused
    residual_capture), per CFG branch. `observer(position)` is the callback for observing(),
    with position() the (branch, step) of the call in progress (None: not observed);
    end_generation() after each generation; profile() the result."""

    def __init__(self, model, units, resnets):
        self.model, self.units, self.resnets = model, units, resnets
        self.group = process_group(model)
        self.sums, self.counts, self.prev = {}, {}, {}
        self.steps, self.timesteps, self.branches, self.runs = None, None, set(), 0

    def observer(self, position):
        from cachekern import kernels    # Triton loads with the first profile, not with cachekern

        def observe(index, unit, args, kwargs, result):
            where = position()
            if where is None:
                return
            branch, step = where
            x = unit_inputs(unit, args, kwargs)[unit.io.primary]
            out = unit.io.outputs(result)[unit.io.primary]
            key = (branch, index)
            last = self.prev.get(key)
            if last is not None and last.shape != out.shape:    # what is kept has out's shape
                last = None
            if out.shape == x.shape:
                residual, diff, cur = kernels.residual_capture(out.contiguous(), x.contiguous(),
                                                               last)
            else:
                residual = out.detach().clone()
                cur = residual.float().abs().sum()
                diff = None if last is None else (residual.float() - last.float()).abs().sum()
            self.prev[key] = residual
            self.branches.add(branch)
            if diff is not None:
                cell = (index, step)
                pair = torch.stack([diff.sum().float(), cur.sum().float()])
                if self.group is not None:      # context parallelism: every rank's slice counts
                    pair = sum_across_ranks(pair, self.group)
                self.sums[cell] = self.sums.get(cell, 0.0) + (pair[0] / pair[1]).item()
                self.counts[cell] = self.counts.get(cell, 0) + 1
        return observe

    def end_generation(self, steps, timesteps):
        """After a generation of `steps` calls per branch; `timesteps`: its first branch's."""
        self.prev.clear()           # residuals are compared within a generation only
        if self.steps is not None and steps != self.steps:
            raise ValueError(f"run: generated {steps} steps after {self.steps}; every run of "
                             f"a profile must use the same step count")
        self.steps = steps
        self.runs += 1
        if self.timesteps is None:
            self.timesteps = list(timesteps)

    def profile(self):
        if self.steps is None:
            raise ValueError("run: the model was never called")
        change = [[(self.sums[(i, t)] / self.counts[(i, t)]) if (i, t) in self.counts
                   else math.nan for t in range(self.steps)] for i in range(len(self.units))]
        return Profile(model_class=type(self.model).__name__, units=[u.name for u in self.units],
                       change=change, timesteps=self.timesteps, runs=self.runs,
                       branches=sorted(self.branches), resnets=self.resnets)


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
    units = cached_units(model, resnets)
    tracker = CallTracker(model)
    changes = BlockChanges(model, units, resnets)

    def after(steps):
        changes.end_generation(steps, tracker.timesteps[sorted(tracker.timesteps)[0]])

    generations(tracker, units, changes.observer(lambda: tracker.current), run, runs, after)
    return changes.profile()
