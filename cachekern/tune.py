"""cachekern.tune: the fastest cache setting that keeps the user's quality, found on the user's
own model, sampler and step count.

    result = cachekern.tune(pipe, lambda seed: pipe(prompt, generator=torch.Generator().manual_seed(seed),
                                                    output_type="pt").images, speedup=2.0)
    cachekern.patch(pipe, result.policy)
    result.save("tuned.cachekern")          # later: cachekern.load_tuned("tuned.cachekern", pipe)

`run(seed)` generates once, as the user generates, and returns the output tensor. tune records
uncached generations on calibration seeds (the stack's residuals and TeaCache's indicator pairs)
and on separate evaluation seeds; fits on the calibration seeds only (TeaCache's polynomial,
forecast weights, searched schedules); then screens every candidate on the first evaluation
seed against its uncached output, measures the best few on the other evaluation seeds, and
picks among those, meeting the target, the closest (for a speed-up) or the fastest (for a
minimum PSNR). The candidates: TeaCache's static schedules
(TaylorSeer's regular patterns, with and without the last step, the schedule TeaCache's
online accumulator makes on the calibration runs, and searched ones) with
Taylor, Lagrange or fitted forecasts, its online accumulator with order-1 and order-2
forecasts (its threshold corrected once by the compute it really ran, and kept a step under
the budget, as its compute varies by prompt), and Block Caching's per-block schedules with
order-1 and order-2 forecasts. They are screened in order of promise until the generation
budget (max_generations) is spent, less what the finalists need.

Compute is the fraction of the blocks' FLOPs that ran (counted once per block on the
calibration run; the model's shell, a few percent of a step, runs on every call).
"""

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch

from cachekern.block_caching import BlockCaching, Profile, profile
from cachekern.block_caching.schedule import compute_fraction, delta_for_compute
from cachekern.calibration import record_both
from cachekern.metrics import psnr, ssim
from cachekern.models import adapter_for
from cachekern.models.binding import is_patched, resolve_model
from cachekern.models.blocks import cached_units, is_unet
from cachekern.models.flops import counting_unit_flops
from cachekern.patching import patch, unpatch
from cachekern.teacache import TeaCache
from cachekern.teacache.calibrate import fit_coefficients
from cachekern.teacache.schedule_search import (ForecastError, accumulator_schedule,
                                                greedy_schedule, record_residuals_and_changes,
                                                regular_schedule)

FORMAT = "cachekern.tuned/1"
BUDGETS = (0.6, 0.5, 0.4, 0.3, 0.25)
SLACK = 1e-9
METHODS = ("teacache", "blockcaching")
ONLINE_COST_MARGIN = 1.3
PROMISE_DB = 3.0            # an order-2 forecast is measured when its order 1 came this close
FINALISTS = 4               # the screen keeps back what measuring these on a second seed costs
SURVIVORS = 2               # and these of them on every other seed (successive halving)
MAX_EVALUATION_SEEDS = 4    # the most evaluation seeds tune takes by default
SCREENED = 8                # candidates the screen has room for, at least, by default
MIN_PSNR_SCREEN_DB = 2.0    # for min_psnr: finalists screened at most this far below the goal
CORRECT_BELOW = 0.1         # an online candidate this far below its budget is corrected too


@dataclass
class _Candidate:
    kind: str                     # "static" or "online" (TeaCache), "blocks" (Block Caching)
    label: str
    options: dict
    expected_compute: float       # what measuring it is expected to cost, per seed
    predicted_error: float = float("nan")
    profile: Optional[Profile] = None
    weights: Optional[list] = None
    order: int = 1
    first: bool = False           # measured before every other candidate
    after: Optional[str] = None   # the order-1 candidate whose result decides on this one
    corrected: bool = False       # online: bisected again after a measured overshoot
    limit: Optional[float] = None  # the compute it must run within to meet a speed-up

    def policy(self):
        if self.kind == "blocks":
            return BlockCaching(self.profile, **self.options)
        return TeaCache(**self.options)

    def compute(self, policy, stats):
        """The fraction of the blocks' work that ran: Block Caching's static schedule weighed
        by each block's FLOPs; TeaCache skips or runs the whole stack, so its share of calls."""
        if self.kind == "blocks":
            return compute_fraction(policy.schedule(), self.weights)
        ran = stats["samples_computed"] + stats["samples_skipped"]
        return stats["samples_computed"] / ran if ran else 1.0


@dataclass
class TuneResult:
    """What tune found: `policy` (ready for cachekern.patch), its `compute`, `speedup`, `psnr`
    and `ssim` on the evaluation seeds, `table` (every candidate tried, a dict each),
    `uncached_generations` (the uncached runs it made), `generations` (all it ran, in uncached
    generations' block compute) and what it was tuned on."""

    policy: object            # a TeaCache or a BlockCaching
    options: dict
    label: str
    compute: float
    psnr: float
    ssim: float
    table: List[dict] = field(default_factory=list)
    uncached_generations: int = 0
    generations: float = 0.0      # what tuning cost, in uncached generations' block compute
    model_class: str = ""
    blocks: int = 0
    steps: int = 0

    @property
    def speedup(self) -> float:
        return 1.0 / self.compute

    @property
    def method(self) -> str:
        return type(self.policy).__name__

    def save(self, path):
        """The policy (with its profile, for Block Caching), what it was tuned on and the
        table, as JSON."""
        data = dict(format=FORMAT, model_class=self.model_class, blocks=self.blocks,
                    steps=self.steps, method=self.method, label=self.label,
                    options=self.options, compute=self.compute, psnr=self.psnr, ssim=self.ssim,
                    uncached_generations=self.uncached_generations,
                    generations=self.generations, table=self.table)
        if isinstance(self.policy, BlockCaching):
            data["profile"] = self.policy.profile.description()
        Path(path).write_text(json.dumps(data, indent=1, allow_nan=True))

    def plot(self, path):
        """PSNR against the compute speed-up of every candidate, the chosen one marked."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise RuntimeError("TuneResult.plot needs matplotlib: pip install matplotlib") \
                from error
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for kind, marker, name in (("static", "o", "TeaCache, static"),
                                   ("online", "s", "TeaCache, online"),
                                   ("blocks", "^", "Block Caching")):
            rows = [r for r in self.table if r["kind"] == kind and math.isfinite(r["psnr"])]
            ax.scatter([1 / r["compute"] for r in rows], [r["psnr"] for r in rows], s=14,
                       marker=marker, alpha=0.6, label=name)
        ax.scatter([self.speedup], [self.psnr], s=90, facecolors="none", edgecolors="red",
                   linewidths=2, label=f"chosen: {self.label}")
        ax.set_xlabel("speed-up (block compute)")
        ax.set_ylabel("PSNR vs uncached, dB")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def load_tuned(path, target, num_inference_steps: Optional[int] = None):
    """The policy a TuneResult saved (a TeaCache or a BlockCaching), checked against the model
    it is applied to (its class and number of blocks) and, when given, the step count it will
    run."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"path: cannot read a tuned setting from {str(path)!r}: {error}") \
            from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"path: {str(path)!r} is not a cachekern.tune result ({FORMAT})")
    model = resolve_model(target)
    blocks = len(adapter_for(model).model_blocks(model))
    if type(model).__name__ != data["model_class"] or blocks != data["blocks"]:
        raise ValueError(f"target: tuned for a {data['model_class']} with {data['blocks']} "
                         f"blocks, got a {type(model).__name__} with {blocks}; tune this model")
    if num_inference_steps is not None and num_inference_steps != data["steps"]:
        raise ValueError(f"num_inference_steps: tuned for {data['steps']} steps, got "
                         f"{num_inference_steps}; tune at the step count you generate with")
    if data.get("method") == "BlockCaching":
        return BlockCaching(Profile.from_description(data["profile"]), **data["options"])
    return TeaCache(**data["options"])


def _check_target(speedup, min_psnr):
    if (speedup is None) == (min_psnr is None):
        raise ValueError("tune: pass exactly one of speedup=... (at least this speed-up, the "
                         "closest to uncached) or min_psnr=... (at least this PSNR, the fastest)")
    if speedup is not None and (isinstance(speedup, bool) or
                                not isinstance(speedup, (int, float)) or
                                not math.isfinite(speedup) or speedup <= 1):
        raise ValueError(f"speedup: expected a number > 1, got {speedup!r}")
    if min_psnr is not None and (isinstance(min_psnr, bool) or
                                 not isinstance(min_psnr, (int, float)) or
                                 not math.isfinite(min_psnr) or min_psnr <= 0):
        raise ValueError(f"min_psnr: expected a positive number of dB, got {min_psnr!r}")


def _check_seeds(calibration_seeds, evaluation_seeds, overlap=True):
    for name, seeds in (("calibration_seeds", calibration_seeds),
                        ("evaluation_seeds", evaluation_seeds)):
        if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__") or \
                not list(seeds) or not all(isinstance(s, int) and not isinstance(s, bool)
                                           for s in seeds):
            raise ValueError(f"{name}: expected a non-empty list of int seeds, got {seeds!r}")
    if overlap and set(calibration_seeds) & set(evaluation_seeds):
        raise ValueError("evaluation_seeds: must differ from calibration_seeds (a setting is "
                         "judged on seeds it was not fitted on)")


def _output(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    raise TypeError(f"run: expected run(seed) to return the generated tensor, got "
                    f"{type(value).__name__} (e.g. pipe(..., output_type='pt').images)")


def _pattern(compute):
    return "".join("C" if c else "." for c in compute)


def _static_candidates(records, steps, target_compute, count, trajectory):
    """About `count` static settings (schedule and forecast) to measure: the densest regular
    pattern in the budget, the online accumulator's schedule on the calibration runs
    (accumulator_schedule, `trajectory` their input changes), and those whose forecast error,
    predicted on the calibration runs' recorded stack residuals, is smallest; within the
    compute budget for a speed-up, else at each of a few budgets. (label, options, predicted
    error, measured first) each."""
    forms = {"taylor order 2": ForecastError(records, 2, "timestep", basis="taylor"),
             "lagrange order 1": ForecastError(records, 1, "timestep"),
             "fitted order 1": ForecastError(records, 1, "timestep", fitted=True),
             "fitted order 2": ForecastError(records, 2, "timestep", fitted=True)}
    schedules = [regular_schedule(steps, interval, warmup, last) for interval in (2, 3, 4, 5, 6)
                 for warmup in (1, 2, 3) for last in (False, True)]
    regular = {tuple(c) for c in schedules}
    budgets = [target_compute] if target_compute is not None else list(BUDGETS)
    schedules += [greedy_schedule(forms["fitted order 2"], b) for b in budgets]
    accumulated = {tuple(c) for c in (accumulator_schedule(trajectory, steps,
                                                           int(b * steps + SLACK))
                                      for b in budgets) if c is not None}
    schedules += [list(c) for c in accumulated]
    scored, seen = [], set()
    for compute in schedules:
        key = tuple(compute)
        if key in seen:
            continue
        seen.add(key)
        fraction = sum(compute) / steps
        for name, errors in forms.items():
            options = dict(compute_steps=compute, forecast_order=errors.order)
            if name.startswith("taylor"):
                options["forecast_basis"] = "taylor"
            if errors.fitted:
                options["forecast_weights"] = errors.fitted_weights(compute)
            origin = " (accumulator)" if key in accumulated else ""
            scored.append((errors.total(compute), fraction,
                           f"{_pattern(compute)} {name}{origin}", options))
    # The prediction ranks forecasts of one schedule well but can misjudge schedules against
    # each other (early steps, with large residuals, dominate the error sum), so the densest
    # regular pattern in the budget, with Taylor and Lagrange forecasts (what wins most often
    # in benchmarks/RESULTS.md), is always measured too. (Its fitted forms instead were tried:
    # on pixart-scenes they displaced the pattern that computes the last step, 5 dB better.)

    def densest_regular(lo, hi):
        band = [c for c in scored if lo < c[1] <= hi + SLACK and
                tuple(c[3]["compute_steps"]) in regular and "fitted" not in c[2]]
        if not band:
            return []
        top = max(c[1] for c in band)
        return sorted(c for c in band if c[1] == top)[:2]

    def accumulators(lo, hi, forms):
        """The accumulator's schedule in the band, with the forms named (or, forms None, the
        one predicted best). On pixart-scenes it beat every regular and searched schedule of
        its step count by 2-3 dB (benchmarks/RESULTS.md, "cachekern.tune against the full
        sweep"): the error prediction misjudges where late steps matter."""
        band = sorted(c for c in scored if lo < c[1] <= hi + SLACK and
                      tuple(c[3]["compute_steps"]) in accumulated and
                      (forms is None or any(f" {form} " in c[2] for form in forms)))
        return band if forms is not None else band[:1]

    chosen, first = [], []
    if target_compute is not None:
        chosen = first = densest_regular(0.0, target_compute) + accumulators(
            0.0, target_compute, ("taylor order 2", "lagrange order 1"))
        within = sorted(c for c in scored if c[1] <= target_compute + SLACK and c not in chosen)
        # One form a schedule (the one predicted best): which steps compute matters more
        # than the form, and the prediction misranks schedules, so more of them are tried.
        # Only the two largest step counts in the budget: computing less is speed not asked for.
        counts = sorted({round(c[1] * steps) for c in within}, reverse=True)[:2]
        kept, schedules = [], {tuple(c[3]["compute_steps"]) for c in chosen}
        for c in within:
            if round(c[1] * steps) in counts and \
                    tuple(c[3]["compute_steps"]) not in schedules:
                schedules.add(tuple(c[3]["compute_steps"]))
                kept.append(c)
        chosen = chosen + kept[:max(0, count - len(chosen))]
    else:                   # the best few at each budget: the fastest that meets min_psnr wins
        for lo, hi in zip(BUDGETS[1:] + (0.0,), BUDGETS):
            picks = densest_regular(lo, hi)[:1] + accumulators(lo, hi, None)
            band = sorted(c for c in scored if lo < c[1] <= hi + SLACK and c not in picks)
            chosen += picks + band[:1]
    return [(label, options, error, (error, fraction, label, options) in first)
            for error, fraction, label, options in chosen]


def simulated_compute(policy: TeaCache, trajectory, steps) -> float:
    """The fraction of calls `policy`'s online accumulator would compute on the recorded input
    changes (ChangeRecorder.trajectory), deciding as the runtime decides. Under caching the
    inputs drift a little from the uncached ones these are, so this estimates compute; it costs
    no generation."""
    polynomial = policy.polynomial_for("")
    computed = total = 0
    for series in trajectory.values():
        accumulated, skips = 0.0, 0
        for step, rel in series:
            forced = step == 0 or step < policy.warmup_steps or \
                (policy.compute_last_step and step >= steps - 1)
            compute, accumulated, _ = policy.decide(accumulated, skips, rel, polynomial, forced)
            skips = 0 if compute else skips + 1
            computed += compute
            total += 1
    return computed / total


def threshold_for(budget, trajectory, steps, **options) -> Optional[float]:
    """The smallest threshold whose simulated compute (simulated_compute) is within `budget`,
    found by bisection; None when even a threshold that skips all it may stays above it (the
    warm-up and last steps are forced)."""
    def compute(threshold):
        return simulated_compute(TeaCache(threshold=threshold, **options), trajectory, steps)

    lo, hi = 0.0, 1e-3
    while compute(hi) > budget + SLACK:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            return None
    for _ in range(50):
        mid = (lo + hi) / 2
        if compute(mid) <= budget + SLACK:
            hi = mid
        else:
            lo = mid
    return hi


def _online_candidates(trajectory, steps, coefficients, target_compute, budgets=None):
    """The online accumulator (the calibrated polynomial, forecasts of order 1 and 2) at the
    threshold bisected for the budget (for a speed-up), or for each of a few budgets; `budgets`
    instead: the replay's budgets to bisect for (a corrected threshold's)."""
    options = dict(coefficients=coefficients, clamp=True, num_inference_steps=steps)
    out, seen = [], set()
    if budgets is None:
        budgets = [target_compute] if target_compute is not None else list(BUDGETS)
    for budget in budgets:
        threshold = threshold_for(budget, trajectory, steps, **options)
        if threshold is None or threshold in seen:
            continue
        seen.add(threshold)
        for order in (1, 2) if target_compute is not None else (1,):
            # Under caching the inputs drift from the recorded ones and it computes a little
            # more than the replay says: its expected cost is taken above the budget.
            out.append(_Candidate("online", f"online threshold {threshold:.4g} order {order}",
                                  dict(options, threshold=threshold, forecast_order=order),
                                  min(1.0, budget * ONLINE_COST_MARGIN), order=order,
                                  after=None if order == 1 else
                                  f"online threshold {threshold:.4g} order 1"))
    return out


def _corrected_online(candidate, row, trajectory, steps, coefficients, target_compute):
    """Under caching the inputs drift from the recorded ones, so the threshold bisected on the
    replay lands off the budget. After an order-1 online candidate ran, the threshold bisected
    again for the replay's compute scaled by how far the real compute fell from the target
    (once: a corrected candidate is not corrected again), with its order-2 twin."""
    if candidate.kind != "online" or candidate.order != 1 or candidate.corrected or \
            target_compute is None:
        return []
    real = row["compute"]
    if target_compute * (1 - CORRECT_BELOW) <= real <= target_compute + SLACK:
        return []                   # on target: nothing to correct
    # The replay's own compute at this threshold (at or below the budget it was bisected
    # for, in whole steps), scaled by the drift the real run showed.
    replayed = simulated_compute(TeaCache(**candidate.options), trajectory, steps)
    budget = replayed * target_compute / max(real, SLACK)
    fresh = _online_candidates(trajectory, steps, coefficients, target_compute,
                               budgets=[min(budget, 1.0)])
    for c in fresh:
        c.corrected = True
        c.expected_compute = target_compute
        c.label += " (corrected)"
        if c.after is not None:
            c.after += " (corrected)"
    return [c for c in fresh if c.options["threshold"] != candidate.options["threshold"]]


def _block_caching_candidates(prof, weights, target_compute):
    """Block Caching on the schedule whose share of the blocks' work (`weights`, one a block)
    is the largest within the budget (for a speed-up), or within each of a few budgets, with
    plain forecasts of order 1 and 2 (a fitted one would cost a generation more each)."""
    out, seen = [], set()
    for budget in [target_compute] if target_compute is not None else list(BUDGETS):
        if budget < 1 / prof.steps:       # below reusing every block after the first step
            continue
        delta = delta_for_compute(prof.change, budget, weights=weights)
        schedule = prof.schedule(delta)
        key = tuple(map(tuple, schedule))
        if key in seen:
            continue
        seen.add(key)
        compute = compute_fraction(schedule, weights)
        for order in (1, 2) if target_compute is not None else (1,):
            out.append(_Candidate("blocks", f"block caching delta {delta:.4g} order {order}",
                                  dict(delta=delta, scale_shift=None, forecast_order=order),
                                  compute, profile=prof, weights=weights, order=order,
                                  after=None if order == 1 else
                                  f"block caching delta {delta:.4g} order 1"))
    return out


def _in_order_of_promise(candidates):
    """What is measured first while the budget lasts: the densest regular patterns (what wins
    most often in benchmarks/RESULTS.md), each method's order-1 forecast, then the rest."""
    def rank(c):
        if c.first:
            return 0
        return {("online", 1): 1, ("blocks", 1): 2, ("static", 1): 3}.get(
            (c.kind, 1 if c.kind == "static" else c.order), 4)
    return sorted(candidates, key=rank)      # stable: each group keeps its order


def _promising(candidate, table, target_compute):
    """An order-2 forecast is worth measuring unless its order-1 twin (same threshold or
    schedule) ran over the budget or trailed the best setting within it by PROMISE_DB."""
    twin = next((r for r in table if r["label"] == candidate.after), None)
    if twin is None or target_compute is None:
        return True
    if not _within(twin):
        return False
    within = [r["psnr"] for r in table if _within(r)]
    return twin["psnr"] >= max(within) - PROMISE_DB


def _check_methods(methods):
    if isinstance(methods, str) or not hasattr(methods, "__iter__") or not list(methods) or \
            set(methods) - set(METHODS):
        raise ValueError(f"methods: expected a non-empty subset of {METHODS}, got {methods!r}")


def tune(target, run: Callable[[int], torch.Tensor], *, speedup: Optional[float] = None,
         min_psnr: Optional[float] = None, calibration_seeds: Sequence[int] = (10_000,),
         evaluation_seeds: Optional[Sequence[int]] = None, static_candidates: int = 12,
         methods: Sequence[str] = METHODS, max_generations: float = 12.0,
         progress: bool = True) -> TuneResult:
    """The cache setting for `target` (a pipeline or its denoiser) that meets `speedup` (the
    closest to the uncached outputs among those at least that fast) or `min_psnr` (the fastest
    among those at least that close), measured with `run(seed)` on `evaluation_seeds` after
    fitting on `calibration_seeds`. By default the evaluation seeds are 0, 1, ..., as many as
    the budget leaves the screen room for SCREENED candidates (2 to MAX_EVALUATION_SEEDS: 2
    at 1.5x and for min_psnr, 3 at 2x, 4 at 3x with the default budget).

    Candidates (`methods`: "teacache", "blockcaching"): of TeaCache's static schedules, the
    densest regular pattern in the budget and the online accumulator's schedule on the
    calibration runs (at the budget's step count), each with Taylor and Lagrange forecasts, and
    up to
    `static_candidates` others at the two largest step counts in the budget, one a schedule,
    in the order of the forecast error predicted on the calibration runs; its online
    accumulator at the threshold bisected for the budget less one step (its decisions
    replayed on the calibration runs' recorded input changes), with order-1 and order-2
    forecasts, bisected once more when the compute it really ran fell off that; Block Caching
    on the per-block schedule bisected for the budget in FLOPs, with order-1 and order-2
    forecasts (for min_psnr: order 1 at each of a few budgets). Tuning spends at most
    `max_generations` uncached generations' block work: the uncached runs (the evaluation
    seeds, and the calibration seeds once for both methods: cachekern.calibration), then
    each candidate on the first evaluation seed in order of promise while it fits (an
    order-2 forecast only where its order-1 twin was within the budget and PROMISE_DB of the
    best), then the best screened within the budget on the second evaluation seed (the
    FINALISTS first, the screen keeping their cost back, and more while what is left
    allows), then the best of those on two seeds on every other seed (SURVIVORS of them at
    least, more while what is left allows); for min_psnr, the fastest screened near it on
    every other seed, until one reaches it. The choice is made among the candidates
    measured on every evaluation seed.
    Raises ValueError when no candidate meets the target, naming the closest."""
    _check_target(speedup, min_psnr)
    if not callable(run):
        raise TypeError(f"run: expected a callable run(seed) that generates once, got "
                        f"{type(run).__name__}")
    if isinstance(max_generations, bool) or not isinstance(max_generations, (int, float)):
        raise ValueError(f"max_generations: expected a number, got {max_generations!r}")
    _check_seeds(calibration_seeds, (0,) if evaluation_seeds is None else evaluation_seeds,
                 overlap=evaluation_seeds is not None)
    if evaluation_seeds is None:
        evaluation_seeds = _evaluation_seeds(speedup, max_generations, calibration_seeds)
    _check_methods(methods)
    uncached = len(evaluation_seeds) + len(calibration_seeds)
    if not max_generations > uncached:
        raise ValueError(f"max_generations: expected a number above {uncached} (the uncached "
                         f"generations: {len(evaluation_seeds)} evaluation seeds, "
                         f"{len(calibration_seeds)} calibration seed(s)), got "
                         f"{max_generations!r}")
    model = resolve_model(target)
    if is_patched(model):
        raise RuntimeError("tune: the model is patched; unpatch it first (tune measures the "
                           "uncached model against its candidates)")
    spent = 0

    def calibration_runs():
        seeds = iter(list(calibration_seeds))
        return lambda: run(next(seeds))

    references = {}
    with torch.no_grad():
        for seed in evaluation_seeds:
            references[seed] = _output(run(seed)).float().cpu()
            spent += 1
    target_compute = None if speedup is None else 1.0 / speedup
    candidates, steps = [], None
    # One pass over the calibration seeds records what both methods fit on
    # (cachekern.calibration); one method alone records only its own.
    resnets = is_unet(model)     # a UNet's ResNet blocks too: BC covers what TeaCache skips
    if set(methods) == set(METHODS):
        calibration = record_both(target, run, calibration_seeds, resnets=resnets)
        records, changes = calibration.records, calibration.changes
        prof, weights = calibration.profile, calibration.weights
        spent += calibration.generations
    elif "teacache" in methods:
        records, changes = record_residuals_and_changes(target, calibration_runs(),
                                                        len(calibration_seeds), "tune")
        spent += len(calibration_seeds)
    else:
        with counting_unit_flops(model, cached_units(model, resnets=resnets)) as weights:
            prof = profile(target, calibration_runs(), runs=len(calibration_seeds),
                           resnets=resnets)
        spent += len(calibration_seeds)
    if "teacache" in methods:
        # The stack's residuals give the static schedules' forecast errors; TeaCache's input
        # and output changes its polynomial, and the decisions replayed to bisect thresholds.
        coefficients = fit_coefficients(changes.pairs)
        steps = max(step for _, _, step, _, _ in records) + 1
        statics = _static_candidates(records, steps, target_compute, static_candidates,
                                     changes.trajectory)
        candidates += [_Candidate("static", label, options, sum(options["compute_steps"]) /
                                  steps, error, first=first)
                       for label, options, error, first in statics]
        # The online accumulator's compute varies by prompt and seed: it must keep a step
        # under the budget on the evaluation seeds, or it runs over it on other prompts
        # (benchmarks/RESULTS.md, "cachekern.tune against the full sweep").
        online_target = None if target_compute is None else target_compute - 1 / steps
        if online_target is None or online_target > 0:
            candidates += _online_candidates(changes.trajectory, steps, coefficients,
                                             online_target)
    if "blockcaching" in methods:
        steps = prof.steps
        candidates += _block_caching_candidates(prof, weights, target_compute)
    if not candidates:      # before measuring anything: nothing fits the budget
        raise ValueError(f"speedup: no candidate reaches {speedup:.2f}x: the steps every "
                         f"setting computes (the first, warm-up and last ones) take more than "
                         f"1/{speedup:g} of this run's {steps} steps")
    candidates = _in_order_of_promise(candidates)
    _set_limits(candidates, target_compute, steps)
    bar = _progress(progress, len(candidates))
    # Racing: every candidate is screened on the first evaluation seed; the best few go on to
    # the others (what they are judged on), so a hopeless one costs one seed, not all.
    screen, rest = list(references)[:1], list(references)[1:]
    reserve = _finalists_cost(len(rest), target_compute)
    table, cost, queue = [], float(spent), list(candidates)
    while queue:
        candidate = queue.pop(0)
        if cost + candidate.expected_compute + reserve > max_generations + SLACK or \
                not _promising(candidate, table, target_compute):
            bar.update(1)
            continue                # beyond the budget (a cheaper one may still fit), or lost
        row = _measure(target, run, references, candidate, screen)
        cost += row["compute"]
        table.append(row)
        bar.update(1)
        if "teacache" in methods:
            fresh = _corrected_online(candidate, row, changes.trajectory, steps, coefficients,
                                      online_target)
            _set_limits(fresh, target_compute, steps)
            # Over the budget, the online accumulator is out of the running unless corrected:
            # measured next. Under it, what ran is a valid candidate: the correction waits
            # for what budget is left (measured first, it displaced a searched static
            # schedule 8 dB better on flux-photos at 1.5x).
            if fresh and row["compute"] > row["limit"] + SLACK:
                queue[:0] = fresh
            else:
                queue += fresh
            candidates += fresh
            bar.total += len(fresh)
    bar.close()
    if not table:
        raise ValueError(f"max_generations: {max_generations} leaves no room for a single "
                         f"candidate after the {spent} uncached generations")
    finalists = _finalists(table, target_compute, min_psnr) if rest else []
    made_of = {c.label: c for c in candidates}

    def measure_more(row, seeds):
        nonlocal cost
        more = _measure(target, run, references, made_of[row["label"]], seeds)
        cost += more["compute"] * len(seeds)
        _merge(row, more)

    if min_psnr is not None:
        for row in finalists:
            if cost + row["compute"] * len(rest) <= max_generations + SLACK:
                measure_more(row, rest)
                if row["psnr"] >= min_psnr:
                    break   # the fastest that reaches it on every seed: none faster is left
    else:
        # Successive halving: the finalists on the second seed while the budget lasts (the
        # survivors' later seeds kept back), then the best of them on two seeds, SURVIVORS at
        # least, on every other seed. A finalist that trails on two seeds costs one seed more,
        # not all, and what that saves lets the screen try more candidates.
        later = rest[1:]
        second = []
        for row in finalists:
            if cost + row["compute"] * (1 + SURVIVORS * len(later)) > \
                    max_generations + SLACK:
                continue
            measure_more(row, rest[:1])
            second.append(row)
        if later:
            for row in sorted(second, key=lambda r: (-r["psnr"], r["compute"])):
                if cost + row["compute"] * len(later) <= max_generations + SLACK:
                    measure_more(row, later)
    chosen = _choose(table, target_compute, min_psnr)
    made = made_of[chosen["label"]]
    return TuneResult(policy=made.policy(), options=chosen["options"], label=chosen["label"],
                      compute=chosen["compute"], psnr=chosen["psnr"], ssim=chosen["ssim"],
                      table=table, uncached_generations=spent, generations=cost,
                      model_class=type(model).__name__,
                      blocks=len(adapter_for(model).model_blocks(model)), steps=steps)


def evaluation_seed_count(speedup=None, max_generations=12.0, calibration_runs=1) -> int:
    """How many evaluation seeds tune takes by default: as many as leave the screen room for
    SCREENED candidates after the uncached runs and the finalists' other seeds, from 2 up to
    MAX_EVALUATION_SEEDS. Two seeds rank settings a dB or two apart poorly; at a high
    speed-up a candidate costs little, and more seeds fit the budget."""
    target_compute = None if speedup is None else 1.0 / speedup
    count = 2
    for n in range(3, MAX_EVALUATION_SEEDS + 1):
        left = max_generations - n - calibration_runs - _finalists_cost(n - 1, target_compute)
        if left + SLACK >= SCREENED * _candidate_cost(target_compute):
            count = n
    return count


def _candidate_cost(target_compute):
    """What measuring a candidate on one seed is expected to cost, in generations."""
    return target_compute if target_compute is not None else max(BUDGETS)


def _finalists_cost(other_seeds, target_compute):
    """What the screen keeps back: the FINALISTS measured on a second evaluation seed, and
    SURVIVORS of them on the seeds after it."""
    runs = FINALISTS + SURVIVORS * (other_seeds - 1) if other_seeds else 0
    return runs * _candidate_cost(target_compute)


def _evaluation_seeds(speedup, max_generations, calibration_seeds):
    """The default evaluation seeds: 0 on, skipping the calibration seeds."""
    count = evaluation_seed_count(speedup, max_generations, len(calibration_seeds))
    taken = set(calibration_seeds)
    return tuple([seed for seed in range(count + len(taken)) if seed not in taken][:count])


def _set_limits(candidates, target_compute, steps):
    """The compute each must run within on the evaluation seeds to meet a speed-up: the
    budget, and for the online accumulator a step less (see tune)."""
    for c in candidates:
        if target_compute is not None:
            c.limit = target_compute - (1 / steps if c.kind == "online" else 0.0)


def _within(row):
    return row["compute"] <= row["limit"] + SLACK


def _finalists(table, target_compute, min_psnr):
    """The screened rows worth measuring on the other evaluation seeds, in order: for a
    speed-up, the closest within the budget (FINALISTS of them have their cost kept back;
    the others are measured with what the screen left); for min_psnr, the fastest screened
    near it."""
    if target_compute is not None:
        rows = [r for r in table if _within(r)]
        rows.sort(key=lambda r: (-r["psnr"], r["compute"]))
        return [r for r in rows if r["compute"] < 1 - SLACK]
    # For min_psnr, the fastest first, until one reaches it (or the budget ends).
    rows = [r for r in table if r["psnr"] >= min_psnr - MIN_PSNR_SCREEN_DB]
    rows.sort(key=lambda r: (r["compute"], -r["psnr"]))
    return [r for r in rows if r["compute"] < 1 - SLACK]


def _merge(row, more):
    """`row` measured on more seeds: PSNR and SSIM averaged over all, compute over all."""
    seeds = row["seeds"] + more["seeds"]
    row["psnrs"] = row["psnrs"] + more["psnrs"]
    row["ssims"] = row["ssims"] + more["ssims"]
    row["psnr"] = sum(row["psnrs"]) / len(seeds)
    row["ssim"] = sum(row["ssims"]) / len(seeds)
    if row["kind"] != "blocks":         # TeaCache's share of calls, over every seed's calls
        row["calls"] = [a + b for a, b in zip(row["calls"], more["calls"])]
        row["compute"] = row["calls"][0] / row["calls"][1] if row["calls"][1] else 1.0
    row["seeds"] = seeds


def _measure(target, run, references, candidate, seeds):
    policy = candidate.policy()
    handle = patch(target, policy)
    psnrs, ssims = [], []
    try:
        with torch.no_grad():
            for seed in seeds:
                reference = references[seed]
                handle.reset()
                out = _output(run(seed)).float().cpu()
                psnrs.append(psnr(reference, out))
                try:
                    ssims.append(ssim(reference, out) if reference.dim() in (3, 4) else
                                 float("nan"))
                except ValueError:          # too small for SSIM's window, or not images
                    ssims.append(float("nan"))
        stats = handle.stats()
    finally:
        unpatch(target)
    return dict(label=candidate.label, kind=candidate.kind, method=type(policy).__name__,
                options=candidate.options, compute=candidate.compute(policy, stats),
                psnr=sum(psnrs) / len(psnrs), ssim=sum(ssims) / len(ssims),
                predicted_error=candidate.predicted_error, limit=candidate.limit,
                seeds=list(seeds), psnrs=psnrs,
                ssims=ssims, calls=[stats.get("samples_computed", 0),
                                    stats.get("samples_computed", 0) +
                                    stats.get("samples_skipped", 0)])


def _choose(table, target_compute, min_psnr):
    table = [r for r in table if r["compute"] < 1 - SLACK]    # a setting that never skips
    if not table:
        raise ValueError("run: no candidate skipped a single step of this run (too few steps?)")
    # Judged on every evaluation seed (the finalists); on the screen's seed alone only where
    # no finalist is left.
    seeds = max(len(r["seeds"]) for r in table)
    complete = [r for r in table if len(r["seeds"]) == seeds]
    if target_compute is not None:
        feasible = [r for r in complete if _within(r)] or [r for r in table if _within(r)]
        if feasible:
            return max(feasible, key=lambda r: (r["psnr"], -r["compute"]))
        fastest = min(table, key=lambda r: r["compute"])
        raise ValueError(f"speedup: no candidate reaches {1 / target_compute:.2f}x; the fastest "
                         f"was {fastest['label']} at {1 / fastest['compute']:.2f}x")
    feasible = [r for r in complete if r["psnr"] >= min_psnr]
    if feasible:
        return min(feasible, key=lambda r: (r["compute"], -r["psnr"]))
    closest = max(complete, key=lambda r: r["psnr"])
    raise ValueError(f"min_psnr: no candidate reaches {min_psnr} dB; the closest was "
                     f"{closest['label']} at {closest['psnr']:.2f} dB")


class _Silent:
    """What tune calls on a progress bar, doing nothing (progress=False, or no tqdm)."""

    total = 0

    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(enabled, total):
    if not enabled:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Silent()
    return tqdm(total=total, desc="cachekern.tune: candidates", leave=False)


def main(argv=None) -> int:
    """`cachekern tune`: tune on a shipped reference model (cachekern.reference_models), one
    sample a seed, and save the result."""
    import argparse

    from cachekern import reference_models

    parser = argparse.ArgumentParser(prog="cachekern tune", description=main.__doc__)
    parser.add_argument("--reference-model", required=True,
                        choices=sorted(reference_models.RECIPES))
    goal = parser.add_mutually_exclusive_group(required=True)
    goal.add_argument("--speedup", type=float, help="at least this speed-up, the closest")
    goal.add_argument("--min-psnr", type=float, help="at least this PSNR (dB), the fastest")
    parser.add_argument("--scheduler", default=None, help="default: the model's own")
    parser.add_argument("--evaluation-seeds", type=int, default=2, help="how many")
    parser.add_argument("--device", default=None, help="default: cuda if available")
    parser.add_argument("-o", "--out", required=True, help="where the result goes (JSON)")
    parser.add_argument("--plot", default=None, help="also plot the candidates to this PNG")
    args = parser.parse_args(argv)
    if args.evaluation_seeds < 1:
        parser.error(f"--evaluation-seeds: expected at least 1, got {args.evaluation_seeds}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ref = reference_models.load(args.reference_model, device=device)
    scheduler = args.scheduler or ref.schedulers[0]
    if scheduler not in ref.schedulers:
        parser.error(f"--scheduler: {args.reference_model} samples with one of "
                     f"{ref.schedulers}")
    classes = ref.conditioner.num_classes
    steps = ref.default_steps(scheduler)

    def run(seed):
        return ref.sample([seed % classes], [seed], steps=steps, scheduler=scheduler)

    try:
        result = tune(ref.model, run, speedup=args.speedup, min_psnr=args.min_psnr,
                      evaluation_seeds=tuple(range(args.evaluation_seeds)))
    except ValueError as error:
        print(f"cachekern tune: {error}", file=sys.stderr)
        return 2
    result.save(args.out)
    if args.plot:
        result.plot(args.plot)
    print(f"{result.label}: compute {result.compute:.3f} (speed-up {result.speedup:.2f}x), "
          f"PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f}; {len(result.table)} candidates, "
          f"{result.uncached_generations} uncached generations, "
          f"{result.generations:.1f} in all; saved to {args.out}")
    return 0
