"""TeaCache (Liu et al., CVPR 2025): skip the whole block stack while the rescaled, accumulated
relative L1 change of block 0's timestep-modulated input stays under a threshold, and reuse the
stack's cached residual instead.

Per call and branch: f(rel_l1) is added to an accumulator; below `threshold` the step reuses the
residual, otherwise it computes and the accumulator restarts at 0 (the published rule: the step
that crosses the threshold is computed). Forced computes: the first `warmup_steps` steps, the
last step when the step count is known, a new generation, and any NaN or Inf in the indicator.
"""

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from cachekern._warnings import warn
from cachekern.teacache import coefficients as published

DECISIONS = ("global", "per_sample")
# cuda_graphs with per-sample decisions captures the blocks once per pattern of samples that
# compute: 2**batch - 2 sub-batch branches besides the whole batch's.
PER_SAMPLE_GRAPH_BATCH = 4
FORECAST_TIMES = ("timestep", "step")
FORECAST_OF = ("residual", "output")
FORECAST_BASES = ("lagrange", "taylor")


@dataclass
class TeaCache:
    """TeaCache settings.

    Args:
        threshold: accumulated rescaled distance below which a step is skipped; 0 never skips.
        coefficients: "auto" for the model family's published polynomial (np.poly1d order; the
            raw distance, with a warning, for a family that has none), a list of your own, or
            None for the raw relative L1 distance.
        warmup_steps: steps computed at the start of each generation.
        compute_last_step: always compute the last step, when the step count is known (from the
            pipeline's cache_context or `num_inference_steps`).
        decision: "global" (one decision per call, the published behaviour) or "per_sample"
            (each sample of the batch, and so each half of a batched CFG call, decides alone and
            only the samples that need it are computed).
        max_consecutive_skips: compute after this many skips in a row (None: no limit).
        clamp: clamp f(x) at 0, so a polynomial that dips below zero outside its fitted range
            cannot make the accumulator shrink (off by default: the published code does not).
        parity: reproduce the published implementation's decisions exactly: the indicator from
            the model's own norm1 in its dtype, means rounded in that dtype (global only).
        num_inference_steps: the step count, where no pipeline tells it.
        calls_per_step: without a pipeline naming the branch through ``cache_context``, calls
            are assigned to branches by order: 2 for a model called once for the conditional and
            once for the unconditional branch each step (Wan-style CFG).
        reuse_modulated: on a computed step, serve block 0's norm1 output from the decision's
            modulated input instead of recomputing it (saves block 0's AdaLN projection and
            norm: ~0.03% of a FLUX step). The kernel's m is computed in fp32 and rounded once,
            the model's norm1 rounds after each op, so outputs differ in the last bits: off by
            default, as an uncached and a never-skipping run must agree bit for bit. AdaLN-Zero
            families only (FLUX, SD3, HunyuanVideo); not with parity=True.
        cuda_graphs: on a CUDA device, run every call after a branch's first as one CUDA graph
            that takes the decision on the device and branches on it with conditional graph
            nodes (cachekern.teacache.graphs): no host synchronisation per call, and a skipped
            call costs one graph launch instead of the model's eager forward. Decisions,
            history and outputs are the eager path's bit for bit; history and stats are read
            from the device when asked for. Forecasts (any order, basis, time or fitted
            weights) and static schedules (compute_steps) are graphed too: the history ring
            and the forecast's weights live on the device (cachekern.teacache.device_forecast).
            Every family whose forward can be captured whole (those that read the host
            inside their forward are refused at patch time, with the reason). Per-sample
            decisions are graphed with plain reuse (no forecast): the graph holds one branch
            for each pattern of samples that compute (2**batch, so batches of at most
            PER_SAMPLE_GRAPH_BATCH samples). Not with parity, reuse_modulated or
            forecast_of="output". On the CPU it changes nothing.
            Needs a CUDA 12.4+ driver.
        forecast_order: what a skipped call adds to its input: 0, the last computed residual
            (the published method); 1 or 2, the polynomial through the last 1 + order computed
            residuals, extrapolated to the call's time (fewer when fewer were computed yet in the
            generation).
        forecast_basis: how the forecast extrapolates: "lagrange" (the polynomial through the
            kept points) or "taylor" (TaylorSeer's Taylor series from recursive differences,
            which damps the curvature at order 2; the same at order 1).
        forecast_weights: fitted weights instead (cachekern.fit_forecast, for a static
            schedule): one entry per step, None where the step computes or extrapolates, else
            the weights of the last len(weights) computed values, newest first.
        forecast_of: what is kept and forecast: "residual" (the stack's output minus its input,
            added to the skipped call's own input: the published method at order 0) or
            "output" (the stack's output itself, as TaylorSeer forecasts block outputs).
        compute_steps: a static schedule instead of the indicator: a list with one bool per step,
            True where the stack runs (cachekern.search_schedule finds one for a compute
            budget). The indicator is not computed and `threshold` is unused; a step beyond the
            list computes.
        forecast_time: the variable the forecast extrapolates in: "timestep" (the value the
            model is called with: the sampler's own time, right for shifted and non-uniform
            schedules) or "step" (the call's step index, as diffusers' and cache-dit's
            TaylorSeer do).
    """

    threshold: float = 0.4
    coefficients: Union[str, Sequence[float], None] = "auto"
    warmup_steps: int = 1
    compute_last_step: bool = True
    decision: str = "global"
    max_consecutive_skips: Optional[int] = None
    clamp: bool = False
    parity: bool = False
    num_inference_steps: Optional[int] = None
    calls_per_step: int = 1
    reuse_modulated: bool = False
    cuda_graphs: bool = False
    forecast_order: int = 0
    forecast_time: str = "timestep"
    compute_steps: Optional[Sequence[bool]] = None
    forecast_of: str = "residual"
    forecast_basis: str = "lagrange"
    forecast_weights: Optional[Sequence] = None

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not math.isfinite(self.threshold) or self.threshold < 0:
            raise ValueError(f"TeaCache: threshold must be a finite number >= 0, got "
                             f"{self.threshold!r}")
        if not (self.coefficients is None or self.coefficients == "auto"):
            try:
                values = [float(c) for c in self.coefficients]
            except (TypeError, ValueError):
                values = []
            if not values or isinstance(self.coefficients, str) \
                    or not all(math.isfinite(v) for v in values):
                raise ValueError(f"TeaCache: coefficients must be 'auto', None or a non-empty list "
                                 f"of finite numbers (highest power first), got "
                                 f"{self.coefficients!r}")
            self.coefficients = values
        for name in ("warmup_steps",):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TeaCache: {name} must be an int >= 0, got {value!r}")
        for name in ("max_consecutive_skips", "num_inference_steps", "calls_per_step"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"TeaCache: {name} must be None or an int >= 1, got {value!r}")
        if isinstance(self.forecast_order, bool) or self.forecast_order not in (0, 1, 2):
            raise ValueError(f"TeaCache: forecast_order must be 0, 1 or 2, got "
                             f"{self.forecast_order!r}")
        if self.forecast_time not in FORECAST_TIMES:
            raise ValueError(f"TeaCache: forecast_time must be 'timestep' or 'step', got "
                             f"{self.forecast_time!r}")
        if self.forecast_basis not in FORECAST_BASES:
            raise ValueError(f"TeaCache: forecast_basis must be 'lagrange' or 'taylor', got "
                             f"{self.forecast_basis!r}")
        if self.forecast_weights is not None:
            entries = self.forecast_weights
            try:
                entries = [None if w is None else [float(v) for v in w] for w in entries]
            except (TypeError, ValueError):
                entries = None
            if not entries or any(w is not None and not 1 <= len(w) <= 3 for w in entries):
                raise ValueError(f"TeaCache: forecast_weights must be a list with one entry per "
                                 f"step, None or 1 to 3 numbers, got {self.forecast_weights!r}")
            if self.compute_steps is None:
                raise ValueError("TeaCache: forecast_weights are fitted for a static schedule; "
                                 "pass compute_steps too")
            self.forecast_weights = entries
        if self.forecast_of not in FORECAST_OF:
            raise ValueError(f"TeaCache: forecast_of must be 'residual' or 'output', got "
                             f"{self.forecast_of!r}")
        if self.forecast_of == "output" and self.cuda_graphs:
            raise ValueError("TeaCache: cuda_graphs=True forecasts residuals; "
                             "forecast_of='output' runs eagerly: pass cuda_graphs=False")
        if self.compute_steps is not None:
            steps = self.compute_steps
            if isinstance(steps, (str, bytes)) or not hasattr(steps, "__len__") or \
                    not len(steps) or not all(isinstance(c, bool) for c in steps):
                raise ValueError(f"TeaCache: compute_steps must be None or a non-empty list of "
                                 f"bools (one per step, True: compute), got {steps!r}")
            self.compute_steps = list(steps)
            if self.parity:
                raise ValueError("TeaCache: compute_steps replaces the indicator; it cannot be "
                                 "combined with parity=True")
        if self.decision not in DECISIONS:
            raise ValueError(f"TeaCache: decision must be 'global' or 'per_sample', got "
                             f"{self.decision!r}")
        for name in ("compute_last_step", "clamp", "parity", "reuse_modulated", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TeaCache: {name} must be True or False, got "
                                 f"{getattr(self, name)!r}")
        if self.parity and self.reuse_modulated:
            raise ValueError("TeaCache: parity=True computes the indicator the published way, "
                             "which reuse_modulated=True cannot serve to block 0; choose one")
        if self.cuda_graphs and (self.parity or self.reuse_modulated):
            raise ValueError("TeaCache: cuda_graphs=True decides with the fused kernels; it "
                             "cannot be combined with parity=True or reuse_modulated=True")
        if self.cuda_graphs and self.decision == "per_sample" and \
                (self.forecast_order > 0 or self.forecast_weights is not None):
            raise ValueError("TeaCache: cuda_graphs=True with decision='per_sample' reuses "
                             "residuals (each sample's forecast history is not graphed); pass "
                             "forecast_order=0, or decision='global', or cuda_graphs=False")
        if self.parity and self.decision != "global":
            raise ValueError("TeaCache: parity=True reproduces the published, global decision; "
                             "it cannot be combined with decision='per_sample'")

    def polynomial_for(self, key: str):
        """The coefficient list in force for a model whose published fit would be `key`
        (None: the raw distance). A static schedule reads no indicator, so needs none."""
        if self.compute_steps is not None:
            return None
        if self.coefficients == "auto":
            if key not in published.PUBLISHED:
                warn(f"TeaCache: no published coefficients for '{key}'; using the raw relative "
                     f"L1 distance (pass coefficients=[...] from your own fit, or None to "
                     f"silence this)")
                return None
            return published.PUBLISHED[key]
        return self.coefficients

    def rescale(self, polynomial, rel: float) -> float:
        y = rel if polynomial is None else published.evaluate(polynomial, rel)
        return max(y, 0.0) if self.clamp else y

    def decide(self, state_acc: float, skips: int, rel: float, polynomial, forced: bool):
        """(compute?, new accumulator, rescaled increment) for one sample or one call."""
        if forced or not math.isfinite(rel):
            return True, 0.0, float("nan") if not math.isfinite(rel) else 0.0
        increment = self.rescale(polynomial, rel)
        acc = state_acc + increment
        limit_reached = self.max_consecutive_skips is not None and \
            skips >= self.max_consecutive_skips
        if self.threshold > 0 and acc < self.threshold and not limit_reached \
                and math.isfinite(acc):
            return False, acc, increment
        return True, 0.0, increment
