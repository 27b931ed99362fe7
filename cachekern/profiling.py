"""Block Caching's calibration: `profile` records how much each block's residual changes from one
step to the next; `Profile.fit_scale_shift` fits the per-channel scale and shift that best turn a
reused residual into the freshly computed one. Both run the model uncached, through the calls a
generation makes (host reads are fine here: this is calibration, not inference).

    prof = cachekern.profile(pipe, lambda: pipe(prompt, num_inference_steps=50), runs=4)
    prof.fit_scale_shift(pipe, lambda: pipe(prompt, num_inference_steps=50), delta=0.5)
    prof.save("flux.profile")
"""

import contextlib
import hashlib
import importlib
import json
import math
from pathlib import Path

import torch

from cachekern.block_units import cached_units, timestep_of, wrap_forwards
from cachekern.branches import BranchNames
from cachekern.patching import attach, detach, is_patched, resolve_model
from cachekern.schedule import delta_for_compute, derive_schedule

_FORMAT = "cachekern.profile/1"


def _timestep_value(args, kwargs):
    t = timestep_of(args, kwargs)
    if isinstance(t, torch.Tensor):
        return float(t.detach().float().reshape(-1)[0].item())
    return None if t is None else float(t)


class _CallTracker:
    """Counts a model's calls per CFG branch (see cachekern.branches) while wrappers on its
    blocks observe them: `current` is (branch, step) during a call. Attached to the model the
    way cachekern.patch attaches a handle."""

    def __init__(self, model):
        self.model = model
        self.current = None
        self.counts = {}
        self.timesteps = {}
        self._branches_named = BranchNames()

    def forward(self, original_forward, args, kwargs):
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
def _observing(units, observe):
    """Wraps each unit's forward: observe(index, unit, args, kwargs, result) after each call."""
    def wrap(index, module, forward):
        def observed(*args, **kwargs):
            result = forward(*args, **kwargs)
            observe(index, units[index], args, kwargs, result)
            return result
        return observed
    restore = wrap_forwards([unit.module for unit in units], wrap)
    try:
        yield
    finally:
        restore()


def _generations(tracker, units, observe, run, runs, after):
    """Calls run() `runs` times, uncached, with observe(...) after every cacheable unit's
    forward, and after(steps) once each generation has run (still observed, so that an error
    it raises leaves the model as it was)."""
    with torch.no_grad(), tracker.installed(), _observing(units, observe):
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


def _residual(out, x):
    """What is cached for a block: out − x, or the output itself where the block changes the
    shape (a UNet ResNet block changing the width)."""
    return out - x if out.shape == x.shape else out


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
    kernels = importlib.import_module("cachekern.triton_kernels")
    units = cached_units(model, resnets)
    tracker = _CallTracker(model)
    sums, counts, prev = {}, {}, {}
    timesteps = None
    steps = None

    def observe(index, unit, args, kwargs, result):
        if tracker.current is None:
            return
        branch, step = tracker.current
        x = unit.io.inputs(args, kwargs)[unit.io.primary]
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
            sums[cell] = sums.get(cell, 0.0) + (diff.sum() / cur.sum()).item()
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

    _generations(tracker, units, observe, run, runs, after)
    change = [[(sums[(i, t)] / counts[(i, t)]) if (i, t) in counts else math.nan
               for t in range(steps)] for i in range(len(units))]
    return Profile(model_class=type(model).__name__, units=[u.name for u in units],
                   change=change, timesteps=timesteps, runs=runs,
                   branches=sorted(tracker.counts), resnets=resnets)


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


def schedule_key(schedule) -> str:
    bits = "".join("1" if c else "0" for row in schedule for c in row)
    return hashlib.sha1(bits.encode()).hexdigest()[:16]


def _params_key(schedule, mode):
    """Where a profile stores scale-shift parameters: per schedule, per way they were made."""
    return schedule_key(schedule) if mode == "fit" else f"{schedule_key(schedule)}-{mode}"


class Profile:
    """Per-block change (change[block][step]), what it was recorded on, and the scale-shift
    parameters fitted for given schedules."""

    def __init__(self, model_class, units, change, timesteps, runs=1, branches=(),
                 scale_shift=None, resnets=False):
        self.model_class = model_class
        self.units = list(units)
        self.change = [list(map(float, row)) for row in change]
        self.timesteps = list(timesteps)
        self.runs = runs
        self.branches = list(branches)
        self.resnets = bool(resnets)     # a UNet's ResNet blocks are cached too
        # {schedule_key: {(unit, step, stream): (scale [C], shift [C])}}
        self.scale_shift = scale_shift or {}

    @property
    def steps(self):
        return len(self.timesteps)

    def schedule(self, delta=None, target_compute=None):
        if target_compute is not None:
            delta = delta_for_compute(self.change, target_compute)
        return derive_schedule(self.change, delta)

    # -- scale-shift ------------------------------------------------------------------------
    def fit_scale_shift(self, target, run, *, delta=0.5, target_compute=None, runs=1):
        """Closed-form least squares, per block, reused step and channel, of the freshly computed
        residual on the one the schedule would reuse (r_t ≈ scale · r_s + shift), over `runs`
        uncached generations. Stored in this profile for the schedule of (delta,
        target_compute); returns that schedule's key."""
        check_run(run, runs)
        model = resolve_model(target)
        schedule = self.schedule(delta, target_compute)
        units = cached_units(model, self.resnets)
        self.check_units(units, "fit_scale_shift")
        tracker = _CallTracker(model)
        stats, kept = {}, {}

        def observe(index, unit, args, kwargs, result):
            if tracker.current is None:
                return
            branch, step = tracker.current
            if step >= self.steps:
                raise ValueError(self._steps_error(step + 1))
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
            if steps != self.steps:
                raise ValueError(self._steps_error(steps))

        _generations(tracker, units, observe, run, runs, after)
        params = {cell: tuple(t.float().cpu() for t in fit.solve())
                  for cell, fit in stats.items()}
        key = _params_key(schedule, "fit")
        self.scale_shift[key] = params
        return key

    def train_scale_shift(self, target, run, *, delta=0.5, target_compute=None, runs=8,
                          lr=1e-2, iterations=1, init="fit"):
        """The paper's distillation (see cachekern.scale_shift_training): the model cached on
        the schedule of (delta, target_compute) generates through `run`, `runs` times, while
        its scale and shift learn to match the uncached model on the same inputs. Stored in
        this profile for that schedule (BlockCaching(scale_shift="train")); returns the
        per-call losses [(step, branch, loss)]."""
        from cachekern.scale_shift_training import train_scale_shift

        params, losses = train_scale_shift(self, target, run, delta=delta,
                                           target_compute=target_compute, runs=runs, lr=lr,
                                           iterations=iterations, init=init)
        self.scale_shift[_params_key(self.schedule(delta, target_compute), "train")] = params
        return losses

    def has_scale_shift(self, schedule, mode):
        return _params_key(schedule, mode) in self.scale_shift

    def scale_shift_for(self, schedule, mode="fit"):
        """The parameters stored for `schedule` by fit_scale_shift (mode "fit") or
        train_scale_shift ("train")."""
        key = _params_key(schedule, mode)
        if key not in self.scale_shift:
            how = "fit_scale_shift" if mode == "fit" else "train_scale_shift"
            raise ValueError(f"scale_shift={mode!r}: this profile holds no {mode} scale-shift "
                             f"parameters for this schedule; call profile.{how}(model, run, "
                             f"delta=..., target_compute=...) with the same delta / "
                             f"target_compute first")
        return self.scale_shift[key]

    # -- checks -----------------------------------------------------------------------------
    def _steps_error(self, steps):
        return (f"this profile was recorded for {self.steps} steps (timesteps "
                f"{self.timesteps[:3]}...); the model was run for {steps}: record a profile for "
                f"this step count and scheduler")

    def check_units(self, units, who):
        names = [u.name for u in units]
        if names != self.units:
            raise ValueError(f"{who}: the profile was recorded on a {self.model_class} with "
                             f"blocks {self.units[:3]}... ({len(self.units)}), this model has "
                             f"{names[:3]}... ({len(names)})")

    def check_timestep(self, step, value):
        if step >= self.steps:
            raise ValueError(self._steps_error(step + 1))
        expected = self.timesteps[step]
        if expected is not None and value is not None and \
                abs(value - expected) > 1e-4 * max(1.0, abs(expected)):
            raise ValueError(f"step {step} has timestep {value:g} where the profile has "
                             f"{expected:g}: {self._steps_error('a different schedule of')}")

    # -- files ------------------------------------------------------------------------------
    def save(self, path):
        from safetensors.torch import save_file

        tensors, index = {}, {}
        for key, params in self.scale_shift.items():
            for (unit, step, k), (scale, shift) in params.items():
                name = f"{key}.{unit}.{step}.{k}"
                tensors[f"scale.{name}"] = scale.contiguous()
                tensors[f"shift.{name}"] = shift.contiguous()
                index.setdefault(key, []).append([unit, step, k])
        meta = dict(format=_FORMAT, model_class=self.model_class, units=self.units,
                    change=[[None if math.isnan(v) else v for v in row] for row in self.change],
                    timesteps=self.timesteps, runs=self.runs, branches=self.branches,
                    scale_shift=index, resnets=self.resnets)
        if not tensors:      # safetensors writes no file without a tensor
            tensors["empty"] = torch.zeros(1)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"cachekern": json.dumps(meta)})

    @classmethod
    def load(cls, path):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("cachekern", "{}"))
            if meta.get("format") != _FORMAT:
                raise ValueError(f"path: {path} is not a cachekern profile")
            scale_shift = {}
            for key, entries in meta["scale_shift"].items():
                scale_shift[key] = {
                    (u, s, k): (f.get_tensor(f"scale.{key}.{u}.{s}.{k}"),
                                f.get_tensor(f"shift.{key}.{u}.{s}.{k}"))
                    for u, s, k in entries}
        change = [[math.nan if v is None else v for v in row] for row in meta["change"]]
        return cls(meta["model_class"], meta["units"], change, meta["timesteps"], meta["runs"],
                   meta["branches"], scale_shift, meta.get("resnets", False))
