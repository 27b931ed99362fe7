"""Calibration: fits TeaCache's rescaling polynomial to a model from runs of it.

TeaCache skips on the accumulated change of block 0's modulated input; the published method maps
that change through a polynomial fitted, per model, to the change of the model's output between
consecutive steps (np.polyfit, degree 4). The published coefficients fit the published models
only; any other model (a fine-tune, a new family, the reference models here) needs its own fit.

    coefficients = cachekern.calibrate_teacache(pipe, lambda: pipe(prompt, generator=...))
    cachekern.patch(pipe, cachekern.TeaCache(threshold=0.3, coefficients=coefficients, clamp=True))
"""

import math

import torch

from cachekern.models import adapter_for
from cachekern.models.binding import attach, detach, is_patched, resolve_model
from cachekern.teacache.handle import TeaCacheHandle
from cachekern.teacache.policy import TeaCache


def _output_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise TypeError(f"calibrate_teacache: cannot find the output tensor in a "
                    f"{type(output).__name__}")


def observe_uncached(target, run, runs, on_call, who, attached=None):
    """Calls `run` `runs` times on the model patched with a TeaCache that never skips (its
    outputs are the uncached ones); after each call the cache served, on_call(generation,
    handle, record, output) with the call's history record. attached(handle), when given, is
    called once the handle is attached, before the first run."""
    if not callable(run):
        raise TypeError(f"run: expected a callable that generates once, got {type(run).__name__}")
    if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
        raise ValueError(f"runs: expected a positive int, got {runs!r}")
    model = resolve_model(target)
    if is_patched(model):
        raise RuntimeError(f"{who}: the model is patched; unpatch it first (it observes the "
                           f"uncached model)")
    # Threshold 0 computes every step, the last too: no step count needed (nor warned about).
    handle = TeaCacheHandle(model, adapter_for(model), TeaCache(threshold=0.0, coefficients=None,
                                                                compute_last_step=False))
    attach(model, handle)
    seen, generation = [0], [0]

    def observe(module, args, output):
        if len(handle.history) == seen[0]:
            return              # a call the cache did not serve (e.g. ControlNet residuals)
        seen[0] = len(handle.history)
        on_call(generation[0], handle, handle.history[-1], output)

    hook = model.register_forward_hook(observe)
    try:
        if attached is not None:
            attached(handle)
        for generation[0] in range(runs):
            run()
    finally:
        hook.remove()
        detach(model)
        handle.close()


class ChangeRecorder:
    """An observe_uncached callback recording, per call, TeaCache's input change (the relative
    L1 distance of block 0's modulated input to the previous step's: the history's rel_l1) and
    the output change (mean|o − o_prev| / mean|o_prev| of the model's output), per CFG branch,
    within one generation: `pairs` [(input change, output change)] for the fit, `trajectory`
    {(generation, branch): [(step, input change)]} for replaying decisions offline."""

    def __init__(self):
        self.previous, self.pairs, self.trajectory = {}, [], {}

    def __call__(self, generation, handle, call, output):
        out = _output_tensor(output).detach().float()
        key = (generation, call["branch"])
        prev = self.previous.get(key) if call["step"] > 0 else None
        x = call["rel_l1"]
        self.trajectory.setdefault(key, []).append((call["step"], x))
        if prev is not None and prev.shape == out.shape and isinstance(x, float) and \
                math.isfinite(x):
            y = ((out - prev).abs().mean() / prev.abs().mean()).item()
            if math.isfinite(y):
                self.pairs.append((x, y))
        self.previous[key] = out.clone()


def teacache_pairs(target, run, runs=1):
    """(input change, output change) per call (ChangeRecorder), from `runs` calls of `run`
    (each generates once) on the model patched with a TeaCache that never skips (its outputs
    are the uncached ones)."""
    recorder = ChangeRecorder()
    observe_uncached(target, run, runs, recorder, "calibrate_teacache")
    return recorder.pairs


def fit_coefficients(pairs, degree=4):
    """The degree-`degree` polynomial through (input change, output change) pairs, as the
    TeaCache paper fits it (np.polyfit; highest power first)."""
    import numpy as np

    if not isinstance(degree, int) or degree < 0:
        raise ValueError(f"degree: expected a non-negative int, got {degree!r}")
    if len(pairs) <= degree:
        raise ValueError(f"run: {len(pairs)} consecutive-step pairs recorded, a degree-{degree} "
                         f"fit needs more than {degree}; generate with more steps or runs")
    x, y = map(np.asarray, zip(*pairs))
    return [float(c) for c in np.polyfit(x, y, degree)]


def calibrate_teacache(target, run, *, runs=1, degree=4):
    """TeaCache coefficients (np.poly1d order, highest power first) fitted to `target` from `runs`
    calls of `run`: pass them as TeaCache(coefficients=...), preferably with clamp=True (a
    polynomial is trusted only inside the range it was fitted on)."""
    if not isinstance(degree, int) or degree < 0:
        raise ValueError(f"degree: expected a non-negative int, got {degree!r}")
    return fit_coefficients(teacache_pairs(target, run, runs), degree)
