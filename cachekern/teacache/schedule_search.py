"""A static TeaCache schedule for a compute budget: which steps run the block stack, chosen on
recorded uncached runs so that the forecast error of the skipped steps is smallest.

TeaCache's online accumulator decides from block 0's input change, which does not know what a
forecast can predict (a residual that changes linearly in time costs an order-1 forecast
nothing). Here the uncached stack residual of every step is recorded; starting from every step
computed, steps are dropped one at a time, each time the one whose skip adds the least squared
forecast error over the recorded runs (greedy backward elimination; the error of a skipped step
is that of the forecast from the recorded residuals of the computed steps before it). The result
is a plain list for TeaCache(compute_steps=...): no indicator, and no data-dependent decision.

    steps = cachekern.search_schedule(pipe, run, target_compute=0.5, forecast_order=1)
    cachekern.patch(pipe, cachekern.TeaCache(compute_steps=steps, forecast_order=1))

    weights = cachekern.fit_forecast(pipe, run, steps, forecast_order=2)   # learned, not assumed
    cachekern.patch(pipe, cachekern.TeaCache(compute_steps=steps, forecast_order=2,
                                             forecast_weights=weights))
"""

from cachekern.models.binding import resolve_model
from cachekern.models.context_parallel import is_context_parallel
from cachekern.teacache.calibrate import ChangeRecorder, observe_uncached
from cachekern.teacache.policy import TeaCache


def record_stack_residuals(target, run, runs=1):
    """[(generation, branch, step, time, residual)] of every call of `runs` uncached
    generations."""
    if is_context_parallel(resolve_model(target)):
        # Each rank would search on its own slice and could choose another schedule.
        raise RuntimeError("search_schedule / fit_forecast: not under context parallelism; "
                           "search on one GPU: the schedule and its weights apply on any rank "
                           "count")
    records = []
    observe_uncached(target, run, runs, residual_recorder(records), "search_schedule")
    return records


def residual_recorder(records):
    """An observe_uncached callback appending (generation, branch, step, time, stack residual)
    of each call to `records`."""
    def record(generation, handle, call, output):
        residual = handle._branches[call["branch"]].residual
        records.append((generation, call["branch"], call["step"], call["timestep"],
                        residual.detach().float().clone()))
    return record


def record_residuals_and_changes(target, run, runs, who, also=None, attached=None):
    """One pass over `runs` uncached generations: (records as residual_recorder keeps them,
    the ChangeRecorder of TeaCache's input and output changes), for callers that need both
    the static schedules' forecast errors and the online accumulator's inputs. `also`: one
    more observe_uncached callback; `attached`: as observe_uncached takes it."""
    records, changes = [], ChangeRecorder()
    keep = residual_recorder(records)

    def record(*call):
        keep(*call)
        changes(*call)
        if also is not None:
            also(*call)
    observe_uncached(target, run, runs, record, who, attached=attached)
    return records, changes


class ForecastError:
    """The squared error of forecasting a skipped step's residual from computed ones, summed over
    the recorded runs and branches; memoised per (step, computed steps used). fitted=True: with
    the least-squares weights of those computed residuals (cachekern.fit_forecast's), else with
    the extrapolation in the sampler's time (`basis`: Lagrange, or TaylorSeer's)."""

    def __init__(self, records, forecast_order, forecast_time, fitted=False, basis="lagrange"):
        self.order = forecast_order
        self.fitted = fitted
        self.basis = basis       # without fitted weights: "lagrange" or "taylor"
        self.series = {}      # (generation, branch) -> {step: (time, residual)}
        for generation, branch, step, t, residual in records:
            time = float(step) if forecast_time == "step" or t is None else float(t)
            self.series.setdefault((generation, branch), {})[step] = (time, residual)
        self.steps = max(max(s) for s in self.series.values()) + 1
        self._memo = {}

    def of(self, step, computed_before):
        """Error at `step` when it is skipped and the steps in `computed_before` (ascending)
        were computed."""
        used = tuple(computed_before[-(self.order + 1):])
        key = (step, used)
        if key not in self._memo and self.fitted:
            self._memo[key] = self.least_squares(step, used[::-1])[1]
        if key not in self._memo:
            from cachekern.kernels.forecast import lagrange_weights, taylor_weights  # Triton

            basis = taylor_weights if self.basis == "taylor" else lagrange_weights
            total = 0.0
            for series in self.series.values():
                if step not in series or not all(s in series for s in used):
                    continue
                time, truth = series[step]
                weights = basis([series[s][0] for s in used], time)
                forecast = sum(w * series[s][1] for w, s in zip(weights, used))
                total += float((forecast - truth).pow(2).sum())
            self._memo[key] = total
        return self._memo[key]

    def least_squares(self, step, used):
        """(weights of the residuals at `used`, newest first, summing to 1; the remaining
        squared error) of the best affine combination of them for `step`, over every recorded
        series. Summing to 1 keeps what does not change (a plain least-squares fit shrinks it,
        and that bias adds up along a trajectory)."""
        import numpy as np

        k = len(used)
        gram = np.zeros((k + 1, k + 1))     # over [r_used..., truth]
        for series in self.series.values():
            if step not in series or not all(s in series for s in used):
                continue
            vectors = [series[s][1] for s in used] + [series[step][1]]
            for i in range(k + 1):
                for j in range(i, k + 1):
                    gram[i, j] = gram[j, i] = gram[i, j] + float((vectors[i] * vectors[j]).sum())
        # f = r0 + sum_{i>0} a_i (r_i − r0): least squares of (y − r0) on (r_i − r0)
        n = k - 1
        d_gram = np.array([[gram[i, j] - gram[i, 0] - gram[0, j] + gram[0, 0]
                            for j in range(1, k)] for i in range(1, k)]).reshape(n, n)
        d_cross = np.array([gram[i, k] - gram[i, 0] - gram[0, k] + gram[0, 0]
                            for i in range(1, k)])
        z_norm = gram[k, k] - 2 * gram[0, k] + gram[0, 0]
        if n:
            ridge = 1e-9 * max(np.trace(d_gram) / n, 1e-300)
            a = np.linalg.solve(d_gram + ridge * np.eye(n), d_cross)
        else:
            a = np.zeros(0)
        error = z_norm - 2 * a @ d_cross + a @ d_gram @ a
        weights = [1.0 - float(a.sum())] + [float(v) for v in a]
        return weights, max(float(error), 0.0)

    def fitted_weights(self, compute):
        """Per step: None where `compute` computes, else the least-squares weights of the last
        order + 1 computed residuals, newest first."""
        out, computed = [], []
        for step, c in enumerate(compute):
            if c:
                computed.append(step)
                out.append(None)
            else:
                out.append(self.least_squares(step, computed[-(self.order + 1):][::-1])[0])
        return out

    def total(self, compute):
        error, computed = 0.0, []
        for step, c in enumerate(compute):
            if c:
                computed.append(step)
            else:
                error += self.of(step, computed)
        return error


def _check_order(forecast_order):
    if isinstance(forecast_order, bool) or forecast_order not in (0, 1, 2):
        raise ValueError(f"forecast_order: expected 0, 1 or 2, got {forecast_order!r}")


def fit_forecast(target, run, compute_steps, *, forecast_order=1, runs=1):
    """Forecast weights fitted to `target` for the static schedule `compute_steps`: per skipped
    step, the least-squares combination of the last forecast_order + 1 computed stack residuals
    (newest first) that best gives the step's own, over `runs` recorded uncached generations.
    Pass them as TeaCache(compute_steps=..., forecast_order=..., forecast_weights=...): the
    extrapolation learned from the model's own runs instead of assumed (L2P-Cache's idea)."""
    _check_order(forecast_order)
    TeaCache(compute_steps=compute_steps)            # the schedule's own checks
    errors = ForecastError(record_stack_residuals(target, run, runs), forecast_order,
                           "timestep", fitted=True)
    if len(compute_steps) != errors.steps:
        raise ValueError(f"compute_steps: {len(compute_steps)} entries, but `run` makes "
                         f"{errors.steps} steps")
    return errors.fitted_weights(list(compute_steps))


def search_schedule(target, run, target_compute, *, forecast_order=1, forecast_time="timestep",
                    runs=1, fitted=False):
    """The steps to compute (a list of bools, one per step) so that at most `target_compute` of
    them run the stack and the forecast error over `runs` recorded uncached generations of `run`
    is smallest among those the greedy search visits (fitted=True: the error of fitted
    forecasts, for use with fit_forecast). Step 0 is always computed."""
    if isinstance(target_compute, bool) or not isinstance(target_compute, (int, float)) or \
            not 0 < target_compute <= 1:
        raise ValueError(f"target_compute: expected a fraction in (0, 1], got {target_compute!r}")
    _check_order(forecast_order)
    if forecast_time not in ("timestep", "step"):
        raise ValueError(f"forecast_time: expected 'timestep' or 'step', got {forecast_time!r}")
    errors = ForecastError(record_stack_residuals(target, run, runs), forecast_order,
                           forecast_time, fitted)
    return greedy_schedule(errors, target_compute)


def regular_schedule(steps, interval, warmup, last=False):
    """TaylorSeer's pattern: the first `warmup` steps, then every `interval`-th; `last`: the
    final step computed too (as TeaCache's compute_last_step and SeaCache's cache_end_steps
    do: the final step's error is not smoothed by any later step)."""
    compute = [s < warmup or (s - warmup - 1) % interval == 0 for s in range(steps)]
    if last:
        compute[-1] = True
    return compute


def greedy_schedule(errors, target_compute):
    """Backward elimination on `errors` (a ForecastError) down to `target_compute`."""
    compute = [True] * errors.steps
    budget = max(1, int(target_compute * errors.steps + 1e-9))
    while sum(compute) > budget:
        best = None
        for step in range(1, errors.steps):
            if not compute[step]:
                continue
            compute[step] = False
            cost = errors.total(compute)
            compute[step] = True
            if best is None or cost < best[0]:
                best = (cost, step)
        compute[best[1]] = False
    return compute


def accumulator_schedule(trajectory, steps, count):
    """The steps TeaCache's online accumulator computes, on the raw input change (no
    polynomial) averaged per step over recorded uncached runs (ChangeRecorder.trajectory), at
    the threshold where it computes at most `count` steps: a static schedule that computes
    where the model's input changes most (densely in the last steps of a flow-matching
    sampler), at a fixed cost where the online accumulator's varies by prompt. None when the
    steps it always computes (the first and the last) are more than `count`."""
    if count < min(steps, 2):
        return None
    totals, seen = [0.0] * steps, [0] * steps
    for series in trajectory.values():
        for step, rel in series:
            if 0 <= step < steps and rel == rel:        # not NaN (step 0 has no change)
                totals[step] += rel
                seen[step] += 1
    mean = [t / n if n else float("nan") for t, n in zip(totals, seen)]

    def computed(threshold):
        policy = TeaCache(threshold=threshold, coefficients=None, num_inference_steps=steps)
        accumulated, skips, out = 0.0, 0, []
        for step, rel in enumerate(mean):
            forced = step == 0 or step >= steps - 1
            compute, accumulated, _ = policy.decide(accumulated, skips, rel, None, forced)
            skips = 0 if compute else skips + 1
            out.append(compute)
        return out

    lo, hi = 0.0, 1e-4
    while sum(computed(hi)) > count:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            return None
    for _ in range(60):
        mid = (lo + hi) / 2
        if sum(computed(mid)) <= count:
            hi = mid
        else:
            lo = mid
    return computed(hi)
