"""Quality against compute: the same seeds and classes sampled uncached and with each setting of each
method, on a reference model trained by benchmarks/zoo/train.py.

    python -m benchmarks.quality flux-photos                     # cachekern, fewer steps, the peers
    python -m benchmarks.quality flux-photos --scheduler unipc   # caches on top of UniPC
    python -m benchmarks.quality unet-digits --scheduler ddim
    python -m benchmarks.quality unet-digits --scheduler dpm++
    python -m benchmarks.quality pixart-scenes                   # shifted flow sigmas, batched CFG
    python -m benchmarks.quality wan-motion                      # video, UniPC
    python -m benchmarks.quality flux-photos --quick --untrained # a CPU smoke run on random weights

For each setting, against the uncached outputs of the run's sampler: PSNR (per sample, capped at
100 dB for identical images), SSIM and relative L2, each the mean over samples; PSNR against a
converged run (--converged-steps of the best solver: what the model really samples); against the
data: the model's shipped classifier's accuracy on the samples' classes and the Fréchet distance of
its features to fresh training data (biased upwards by the few samples: compare rows, not
models); the compute
ratio (block work executed ÷ the uncached run's, counted by block_work.BlockWork); the wall time
(on a GPU: the median of --timing-passes generations after the counted one). Fewer steps run with
the sampler itself and with the other solvers. Writes quality_<model>_<scheduler>.csv, .md (the
table at compute budgets 0.5, 0.4 and 0.3: each method's best PSNR within the budget) and .png
(PSNR against speed-up, one line per method) to --out.
"""

import argparse
import contextlib
import csv
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks import quality_methods as methods
from benchmarks.block_work import BlockWork

import cachekern
from cachekern import reference_models
from cachekern.metrics import frechet_distance, psnr, relative_error, ssim

BUDGETS = (0.5, 0.4, 0.3)
BUDGET_SLACK = 0.02   # "about 0.4" admits compute up to 0.42
THRESHOLDS = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.2)
QUICK_THRESHOLDS = (0.05, 0.3)
FIELDS = ("model", "scheduler", "method", "setting", "steps", "compute", "speedup_compute",
          "wall_s", "speedup_wall", "psnr_db", "ssim", "rel_l2", "psnr_converged_db",
          "class_accuracy", "fd", "error")
CONVERGED_SOLVER = "dpm++"     # for every model: second order, the converged reference's solver
REAL_SAMPLES = 2048            # data drawn for the Fréchet distance's reference statistics


METHOD_KEYS = {"fewer": methods.FEWER_STEPS, "teacache": methods.TEACACHE,
               "static": methods.TEACACHE_STATIC,
               "blockcaching": methods.BLOCK_CACHING, "fbc": methods.FIRST_BLOCK_CACHE,
               "taylorseer": methods.TAYLORSEER, "magcache": methods.MAGCACHE,
               "seacache": methods.SEACACHE,
               "dbcache": methods.DBCACHE}
BLOCK_CACHING_TARGETS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
FORECAST_ORDERS = (1, 2)


def settings_for(ref, steps, sample_kwargs, calibration, quick, wanted, distill=False,
                 schedules=()):
    thresholds = QUICK_THRESHOLDS if quick else THRESHOLDS
    found = methods.uncached(steps)
    if methods.FEWER_STEPS in wanted:
        found += methods.fewer_steps(steps)
        for solver in ref.schedulers:
            if solver != sample_kwargs["scheduler"]:
                found += methods.fewer_steps(steps, scheduler=solver)

    def calibration_run():
        return ref.sample(**calibration, steps=steps, **sample_kwargs)

    if methods.BLOCK_CACHING in wanted:
        # A UNet: its attention blocks alone (as the paper caches LDM), and with its ResNet blocks.
        for resnets in ((False, True) if is_unet(ref) else (False,)):
            found += block_caching_settings(ref, steps, calibration, sample_kwargs,
                                            resnets, quick, distill)
    if methods.TEACACHE in wanted:
        calibrated = cachekern.calibrate_teacache(ref.model, calibration_run)
        print(f"TeaCache coefficients fitted by cachekern.calibrate_teacache: {calibrated}")
        # A UNet has no published polynomial ("auto" would be the raw distance again).
        default = {"None": (None, False)} if is_unet(ref) else {"auto": ("auto", False)}
        found += methods.teacache(steps, thresholds, {**default, "None": (None, False),
                                                      "calibrated": (calibrated, True)})
        for order in FORECAST_ORDERS:
            found += methods.teacache(steps, thresholds, {**default,
                                                          "calibrated": (calibrated, True)},
                                      forecast_order=order)
        found += methods.teacache(steps, thresholds, default, forecast_order=1,
                                  forecast_time="step")
    if methods.TEACACHE_STATIC in wanted:
        found += methods.static_schedules(steps, static_candidates(ref.model, calibration_run,
                                                                   steps, quick, schedules))
    if is_unet(ref):
        # UNet2DConditionModel: the diffusers hooks and cache-dit need transformer blocks.
        return found
    if methods.FIRST_BLOCK_CACHE in wanted:
        found += methods.first_block_cache(steps, thresholds)
    if methods.TAYLORSEER in wanted:
        found += methods.taylorseer(steps, (2, 3) if quick else (2, 3, 4, 5, 6, 8),
                                    whole_blocks=methods.WHOLE_BLOCKS.get(ref.name))
    if methods.MAGCACHE in wanted:
        ratios = methods.calibrate_magcache(ref.model, calibration_run, steps)
        found += methods.magcache(steps, thresholds, ratios)
    if methods.SEACACHE in wanted and ref.name == "wan-motion":   # its one adapter here: Wan T2V
        from cachekern.reference_models.common import flow_scheduler
        from cachekern.reference_models.wan_motion import SAMPLING

        solver = flow_scheduler(sample_kwargs["scheduler"], SAMPLING["shift"])
        solver.set_timesteps(steps)
        found += methods.seacache(steps, solver.sigmas[:steps].tolist(), thresholds)
    if methods.DBCACHE in wanted:
        found += methods.dbcache(steps, thresholds)
    return found


def is_unet(ref):
    return type(ref.model).__name__ == "UNet2DConditionModel"


SEARCH_TARGETS = (0.75, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25)


def static_candidates(model, calibration_run, steps, quick, given=()):
    """{label: TeaCache options} of static schedules: TaylorSeer's regular patterns with the
    Taylor or Lagrange basis or weights fitted on the calibration seeds, the schedules
    cachekern.search_schedule finds there for fitted forecasts (one recording serves all),
    and the online accumulator's own schedule there (accumulator_schedule, as tune tries it);
    `given`: patterns ("C" computes, "." forecasts) from --schedule, e.g. the steps a peer
    computed (benchmarks.peer_schedule), with every forecast form."""
    from cachekern.teacache.schedule_search import (ForecastError, accumulator_schedule,
                                                    greedy_schedule, regular_schedule,
                                                    record_residuals_and_changes)

    # One uncached calibration run records the stack's residuals and the input changes.
    records, changes = record_residuals_and_changes(model, calibration_run, 1, "quality")
    fitted = {order: ForecastError(records, order, "timestep", fitted=True) for order in (1, 2)}

    def text(compute):
        return "".join("C" if c else "." for c in compute)
    found = {}
    for interval in ((2, 4) if quick else (2, 3, 4, 5)):
        for warmup in ((1,) if quick else (1, 2, 3)):
            compute = regular_schedule(steps, interval, warmup)
            found[f"{text(compute)} taylor order 2"] = dict(
                compute_steps=compute, forecast_order=2, forecast_basis="taylor")
            found[f"{text(compute)} lagrange order 1"] = dict(compute_steps=compute,
                                                               forecast_order=1)
            for order, errors in fitted.items():
                found[f"{text(compute)} fitted order {order}"] = dict(
                    compute_steps=compute, forecast_order=order,
                    forecast_weights=errors.fitted_weights(compute))
            if not compute[-1]:
                last = regular_schedule(steps, interval, warmup, last=True)
                found[f"{text(last)} taylor order 2, last"] = dict(
                    compute_steps=last, forecast_order=2, forecast_basis="taylor")
                for time in ("timestep", "step"):
                    found[f"{text(last)} lagrange order 1 in {time}, last"] = dict(
                        compute_steps=last, forecast_order=1, forecast_time=time)
                found[f"{text(last)} fitted order 2, last"] = dict(
                    compute_steps=last, forecast_order=2,
                    forecast_weights=fitted[2].fitted_weights(last))
                # At the pattern's own compute: its final computed step moved to the end.
                moved = list(last)
                moved[max(s for s in range(steps - 1) if compute[s])] = False
                if moved[1:].count(True) and moved != compute:
                    found[f"{text(moved)} taylor order 2, moved last"] = dict(
                        compute_steps=moved, forecast_order=2, forecast_basis="taylor")
                    found[f"{text(moved)} lagrange order 1, moved last"] = dict(
                        compute_steps=moved, forecast_order=1)
    for pattern in given:
        compute = [c == "C" for c in pattern]
        found[f"{pattern} given, taylor order 2"] = dict(
            compute_steps=compute, forecast_order=2, forecast_basis="taylor")
        for time in ("timestep", "step"):
            found[f"{pattern} given, lagrange order 1 in {time}"] = dict(
                compute_steps=compute, forecast_order=1, forecast_time=time)
        for order, errors in fitted.items():
            found[f"{pattern} given, fitted order {order}"] = dict(
                compute_steps=compute, forecast_order=order,
                forecast_weights=errors.fitted_weights(compute))
    for target in ((0.5, 0.3) if quick else SEARCH_TARGETS):
        for order, errors in fitted.items():
            compute = greedy_schedule(errors, target)
            found[f"{text(compute)} searched, fitted order {order}"] = dict(
                compute_steps=compute, forecast_order=order,
                forecast_weights=errors.fitted_weights(compute))
        compute = accumulator_schedule(changes.trajectory, steps, int(target * steps + 1e-9))
        if compute is not None:
            found[f"{text(compute)} accumulator's, taylor order 2"] = dict(
                compute_steps=compute, forecast_order=2, forecast_basis="taylor")
            found[f"{text(compute)} accumulator's, lagrange order 1"] = dict(
                compute_steps=compute, forecast_order=1)
    return found


TRAINING_RUNS = 6   # generations of Block Caching's scale-shift distillation, each on new seeds
# Distillation costs minutes a schedule: it runs at the targets whose compute can land near the
# table's budgets, and not for the UNet's attention blocks alone (they are too small a part of
# its work to reach them: 0.78 of the compute at their lowest).
TRAINING_TARGETS = (0.6, 0.5, 0.4, 0.3)


def block_caching_settings(ref, steps, calibration, sample_kwargs, resnets, quick, distill):
    def calibration_run():
        return ref.sample(**calibration, steps=steps, **sample_kwargs)

    training_seeds = iter(range(20_000, 10**9, len(calibration["seeds"])))

    def training_run():       # new seeds each generation, none of the table's
        start = next(training_seeds)
        return ref.sample(calibration["labels"], list(range(start, start + len(
            calibration["seeds"]))), steps=steps, **sample_kwargs)

    profile = cachekern.profile(ref.model, calibration_run, resnets=resnets)
    made = set()

    def prepare(target, mode, order=0):
        """Fits (closed form, the scale-shift or a fitted forecast) or trains (distillation,
        from the fit) the parameters of the target's schedule, once."""
        if (target, mode, order) in made:
            return
        if mode == "fit":
            cachekern.fit_scale_shift(profile, ref.model, calibration_run, target_compute=target,
                                      forecast_order=order)
        else:
            prepare(target, "fit")
            cachekern.train_scale_shift(profile, ref.model, training_run, target_compute=target,
                                        runs=2 if quick else TRAINING_RUNS)
        made.add((target, mode, order))
    label = ("blocks=all " if resnets else "blocks=attention ") if is_unet(ref) else ""
    targets = (0.6, 0.3) if quick else BLOCK_CACHING_TARGETS
    found = methods.block_caching(steps, profile, prepare, targets, (None, "fit"), label)
    for order in FORECAST_ORDERS:
        found += methods.block_caching(steps, profile, prepare, targets, (None, "fit"), label,
                                       forecast_order=order)
    if distill and (resnets or not is_unet(ref)):
        found += methods.block_caching(steps, profile, prepare,
                                       [t for t in targets if t in TRAINING_TARGETS], ("train",),
                                       label)
    return found


def generate(ref, setting, labels, seeds, batch, sample_kwargs, work, device, timing_passes):
    """All samples under `setting`: (images, executed block FLOPs, wall seconds or None).

    A pass over the batches with BlockWork's counters (installed before the cache is applied, so
    they sit under it), for the images and the work; then, on a GPU, `timing_passes` more
    without counters, for the median time (the counted pass was their warm-up: compilation, the
    allocator, a cache's first use)."""

    sample_kwargs = dict(sample_kwargs, **(setting.sample_kwargs or {}))

    def run(lo, hi):
        if setting.before_generation is not None:
            setting.before_generation(ref.model)
        images = ref.sample(labels[lo:hi], seeds[lo:hi], steps=setting.steps, **sample_kwargs)
        reset = getattr(ref.model, "_reset_stateful_cache", None)
        if reset is not None:   # what a diffusers pipeline does after each generation
            reset()
        return images

    def run_all():
        return torch.cat([run(lo, lo + batch) for lo in range(0, len(labels), batch)])

    with work:
        with applied(ref.model, setting):
            work.reset()          # after applying: a method's calibration is not counted
            images = run_all()
        flops = work.flops
    wall = None
    if device.type == "cuda" and timing_passes > 0:
        walls = []
        with applied(ref.model, setting):
            for _ in range(timing_passes):
                torch.cuda.synchronize()
                start = time.perf_counter()
                timed = run_all()
                torch.cuda.synchronize()
                walls.append(time.perf_counter() - start)
                if not torch.equal(timed, images):
                    raise RuntimeError(f"{setting.method} {setting.label}: the timed run's "
                                       f"images differ from the counted run's")
        wall = statistics.median(walls)
    return images, flops, wall


@contextlib.contextmanager
def applied(model, setting):
    remove = setting.apply(model) if setting.apply else None
    try:
        yield
    finally:
        if remove is not None:
            remove()


PSNR_CAP_DB = 100.0   # an identical image has infinite PSNR; capped so that means stay finite


def per_sample(metric, reference, images, **kwargs):
    values = [metric(r, i, **kwargs) for r, i in zip(reference, images)]
    if metric is psnr:
        values = [min(v, PSNR_CAP_DB) for v in values]
    return values


def per_sample_mean(metric, reference, images, **kwargs):
    values = per_sample(metric, reference, images, **kwargs)
    return sum(values) / len(values)


def best_at_budgets(rows):
    """{budget: {method: best row (highest PSNR) with compute ≤ budget + slack}}."""
    table = {}
    for budget in BUDGETS:
        table[budget] = {}
        for row in rows:
            if row["method"] == methods.UNCACHED or row.get("error") or \
                    row["compute"] > budget + BUDGET_SLACK:
                continue
            best = table[budget].get(row["method"])
            if best is None or row["psnr_db"] > best["psnr_db"]:
                table[budget][row["method"]] = row
    return table


def wall_speedup(row):
    value = row["speedup_wall"]
    return "—" if value != value else f"{value:.2f}×"     # NaN: not timed


def _measured(value, digits):
    """A figure, or a dash where it was not measured (NaN)."""
    return "—" if value != value else f"{value:.{digits}f}"


def markdown(rows, title, environment, command):
    lines = [f"### {title}", "", f"`{command}`", "", environment, "",
             "| budget | method | best setting | compute | PSNR dB | SSIM | rel L2 | PSNR vs "
             "converged dB | class acc. | FD | wall speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lowest = {}
    for row in rows:
        if row["method"] != methods.UNCACHED:
            lowest[row["method"]] = min(row["compute"], lowest.get(row["method"], 1.0))
    for row in rows:       # the reference: its class accuracy and FD are the ones to keep
        if row["method"] == methods.UNCACHED:
            lines.append(f"| 1 | uncached | {row['setting']} | 1.000 | — | — | — | "
                         f"{row['psnr_converged_db']:.2f} | "
                         f"{_measured(row['class_accuracy'], 3)} | "
                         f"{_measured(row['fd'], 2)} | — |")
    for budget, best in best_at_budgets(rows).items():
        for method, row in sorted(best.items(), key=lambda kv: -kv[1]["psnr_db"]):
            lines.append(f"| {budget} | {method} | {row['setting']} | {row['compute']:.3f} | "
                         f"{row['psnr_db']:.2f} | {row['ssim']:.4f} | {row['rel_l2']:.4f} | "
                         f"{row['psnr_converged_db']:.2f} | "
                         f"{_measured(row['class_accuracy'], 3)} | {_measured(row['fd'], 2)} | "
                         f"{wall_speedup(row)} |")
        for method in sorted(lowest.keys() - best.keys()):
            lines.append(f"| {budget} | {method} | none: its lowest compute was "
                         f"{lowest[method]:.3f} | | | | | | | | |")
    converged = best_converged(rows)
    if converged:
        lines += ["", "Closest to the converged run at each budget, any method on any sampler: "
                  + "; ".join(f"{budget}: {row['method']} {row['setting']} "
                              f"({row['psnr_converged_db']:.2f} dB)"
                              for budget, row in converged.items())]
    for row in rows:
        if row.get("error"):
            lines.append(f"- {row['method']} {row['setting']}: failed: {row['error']}")
    return "\n".join(lines) + "\n"


def best_converged(rows):
    """{budget: the row closest to the converged run (PSNR) with compute within the budget}."""
    out = {}
    for budget in BUDGETS:
        within = [r for r in rows if not r.get("error") and r["compute"] <= budget + BUDGET_SLACK]
        if within:
            out[budget] = max(within, key=lambda r: r["psnr_converged_db"])
    return out


def pareto(points, key):
    """The points no other point beats in both `key` (speed-up) and PSNR, by speed-up."""
    front, best = [], float("-inf")
    for point in sorted(points, key=lambda p: -p[key]):
        if point["psnr_db"] > best:
            front.append(point)
            best = point["psnr_db"]
    return front[::-1]


def plot(rows, path, title):
    """PSNR against speed-up, each method's best settings (its Pareto front); a second panel
    against wall-clock speed-up when the run was timed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    timed = any(r["speedup_wall"] == r["speedup_wall"] for r in rows
                if r["method"] != methods.UNCACHED)
    keys = [("speedup_compute", "speed-up in block compute (1 / compute ratio)")]
    if timed:
        keys.append(("speedup_wall", "speed-up in wall time"))
    fig, axes = plt.subplots(1, len(keys), figsize=(7 * len(keys), 5), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows
                                             if r["method"] != methods.UNCACHED)):
        points = [r for r in rows if r["method"] == method and not r.get("error")]
        for ax, (key, _) in zip(axes[0], keys):
            front = pareto([p for p in points if p[key] == p[key]], key)
            ax.plot([p[key] for p in front], [min(p["psnr_db"], 60) for p in front],
                    marker="o", ls=styles[i // 10 % len(styles)], label=method, markersize=3,
                    color=plt.cm.tab20(i % 20))
    for ax, (key, xlabel) in zip(axes[0], keys):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("PSNR against uncached, dB")
        ax.grid(alpha=0.3)
        ax.set_xlim(1, 5)
    for budget in BUDGETS:
        axes[0][0].axvline(1 / budget, color="grey", lw=0.5, ls="--")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(reference_models.RECIPES))
    parser.add_argument("--scheduler", default=None,
                        help="the recipe's sampler (default: its first): flux-photos and "
                             "pixart-scenes: euler, dpm++ or unipc; wan-motion: unipc, euler or "
                             "dpm++; unet-digits: ddim or dpm++")
    parser.add_argument("--converged-steps", type=int, default=200,
                        help=f"steps of {CONVERGED_SOLVER} for the converged reference")
    parser.add_argument("--distill", action="store_true",
                        help="also Block Caching's distilled scale-shift (minutes per schedule)")
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--per-class", type=int, default=4, help="samples per class")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--methods", default=",".join(METHOD_KEYS),
                        help=f"comma-separated subset of {','.join(METHOD_KEYS)} (default: all); "
                             f"the uncached run is always made")
    parser.add_argument("--timing-passes", type=int, default=3,
                        help="GPU: timed generations per setting (the median is reported); 0: "
                             "no timing (runs sharing a GPU)")
    parser.add_argument("--out", default=".")
    parser.add_argument("--device", default=None)
    parser.add_argument("--cache-dir", default=None, help="zoo directory")
    parser.add_argument("--untrained", action="store_true", help="random weights (smoke runs)")
    parser.add_argument("--quick", action="store_true", help="a few settings (smoke runs)")
    parser.add_argument("--schedule", action="append", default=[], metavar="PATTERN",
                        help="a static schedule to measure too, one character a step: C "
                             "computes, . forecasts (repeat)")
    parser.add_argument("--only", default=None, metavar="REGEX",
                        help="run only the settings whose 'method setting' text matches REGEX "
                             "(re.search; the uncached run always): e.g. to time a table's "
                             "best rows")
    args = parser.parse_args(argv)
    try:
        only = re.compile(args.only) if args.only is not None else None
    except re.error as error:
        parser.error(f"--only: not a regular expression ({error})")
    unknown = set(args.methods.split(",")) - set(METHOD_KEYS)
    if unknown:
        parser.error(f"--methods: unknown {sorted(unknown)}; choose from {list(METHOD_KEYS)}")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cuda.matmul.allow_tf32 = False    # fp32 throughout: quality, not speed
    torch.backends.cudnn.allow_tf32 = False
    ref = (reference_models.create(args.name, device) if args.untrained else
           reference_models.load(args.name, device, cache_dir=args.cache_dir))
    scheduler = args.scheduler or ref.schedulers[0]
    if scheduler not in ref.schedulers:
        parser.error(f"--scheduler: {args.name} samples with one of {ref.schedulers}")
    sample_kwargs = dict(scheduler=scheduler)
    steps = args.steps or ref.default_steps(scheduler)
    classes = ref.conditioner.num_classes
    labels = [c for c in range(classes) for _ in range(args.per_class)]
    seeds = list(range(len(labels)))
    # TeaCache's polynomial and MagCache's ratios are fitted on seeds not used for the table
    calibration = dict(labels=labels[:args.batch],
                       seeds=[10_000 + s for s in range(len(labels[:args.batch]))])

    environment = environment_line(device)
    work = BlockWork(ref.model, ref.example_call(device))
    judge = DataJudge(args.name, device, args.cache_dir, untrained=args.untrained)
    converged = torch.cat([ref.sample(labels[lo:lo + args.batch], seeds[lo:lo + args.batch],
                                      steps=args.converged_steps, scheduler=CONVERGED_SOLVER)
                           for lo in range(0, len(labels), args.batch)])
    rows, reference, full = [], None, None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"quality_{args.name}_{scheduler}"
    wanted = {METHOD_KEYS[key] for key in args.methods.split(",")}
    for pattern in args.schedule:
        if len(pattern) != steps or set(pattern) - {"C", "."} or pattern[0] != "C":
            parser.error(f"--schedule: expected {steps} characters of C and ., the first C, "
                         f"got {pattern!r}")
    for setting in settings_for(ref, steps, sample_kwargs, calibration, args.quick, wanted,
                                args.distill, args.schedule):
        if args.only is not None and setting.method != methods.UNCACHED and \
                not only.search(f"{setting.method} {setting.label}"):
            continue
        try:
            images, flops, wall = generate(ref, setting, labels, seeds, args.batch,
                                           sample_kwargs, work, device, args.timing_passes)
        except Exception as error:      # a peer that crashes on a model is reported as such
            if reference is None:
                raise
            rows.append(dict(model=args.name, scheduler=scheduler, method=setting.method,
                             setting=setting.label, steps=setting.steps, compute=float("nan"),
                             speedup_compute=float("nan"), wall_s=None,
                             speedup_wall=float("nan"), psnr_db=float("nan"),
                             ssim=float("nan"), rel_l2=float("nan"),
                             psnr_converged_db=float("nan"), class_accuracy=float("nan"),
                             fd=float("nan"), error=f"{type(error).__name__}: {str(error)[:200]}"))
            print(f"{setting.method:<26} {setting.label:<44} failed: {rows[-1]['error']}",
                  flush=True)
            write_csv(rows, stem)
            continue
        if reference is None:
            reference, full = images, (wall, flops)
        row = dict(model=args.name, scheduler=scheduler, method=setting.method,
                   setting=setting.label, steps=setting.steps, compute=flops / full[1],
                   speedup_compute=full[1] / flops, wall_s=wall,
                   speedup_wall=full[0] / wall if wall else float("nan"),
                   psnr_db=per_sample_mean(psnr, reference, images, data_range=2.0),
                   ssim=per_sample_mean(ssim, reference, images, data_range=2.0),
                   rel_l2=per_sample_mean(relative_error, reference, images),
                   psnr_converged_db=per_sample_mean(psnr, converged, images, data_range=2.0),
                   **judge(images, labels), error="")
        rows.append(row)
        write_csv(rows, stem)      # as it goes: a run cut short keeps what it measured
        print(f"{row['method']:<26} {row['setting']:<44} compute {row['compute']:.3f}  "
              f"PSNR {row['psnr_db']:6.2f}  SSIM {row['ssim']:.4f}  "
              f"conv {row['psnr_converged_db']:6.2f}  acc {row['class_accuracy']:.3f}  "
              f"FD {row['fd']:7.3f}  wall {wall or float('nan'):6.2f} s",
              flush=True)

    write_csv(rows, stem)
    title = (f"{args.name}, {scheduler}, {steps} steps, {len(labels)} samples; converged: "
             f"{CONVERGED_SOLVER} {args.converged_steps} steps"
             f"{' (untrained)' if args.untrained else ''}")
    command = "python -m benchmarks.quality " + " ".join(argv if argv is not None else
                                                         sys.argv[1:])
    summary = markdown(rows, title, environment, command)
    Path(f"{stem}.md").write_text(summary)
    plot(rows, f"{stem}.png", title)
    print(summary)
    return rows


class DataJudge:
    """Against the data rather than the uncached run: the model's classifier's accuracy on the
    samples (for the labels they were asked for), and the Fréchet distance between its features
    of the samples and of REAL_SAMPLES fresh training examples. NaN without a classifier."""

    def __init__(self, name, device, cache_dir=None, untrained=False):
        from cachekern.reference_models import classifier

        self.net = None
        try:
            self.net = classifier.load(name, device, cache_dir=cache_dir)
        except FileNotFoundError as error:
            print(f"no class accuracy or FD: {error}")
            return
        from benchmarks.zoo.sources import data_source

        real, _ = data_source(name, device).batch(REAL_SAMPLES, torch.Generator().manual_seed(7))
        self.real_features = self.features(real)

    def features(self, images):
        with torch.no_grad():
            return torch.cat([self.net.features(images[lo:lo + 256])
                              for lo in range(0, len(images), 256)])

    def __call__(self, images, labels):
        if self.net is None:
            return dict(class_accuracy=float("nan"), fd=float("nan"))
        features = self.features(images)       # one pass: the logits are the head's
        with torch.no_grad():
            predicted = self.net.head(features).argmax(1)
        labels = torch.as_tensor(labels, device=predicted.device)
        return dict(class_accuracy=(predicted == labels).float().mean().item(),
                    fd=frechet_distance(features, self.real_features))


def write_csv(rows, stem):
    with open(f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def environment_line(device):
    import diffusers

    parts = [f"torch {torch.__version__}", f"diffusers {diffusers.__version__}"]
    try:
        import cache_dit
        parts.append(f"cache-dit {cache_dit.__version__}")
    except ImportError:
        parts.append("cache-dit not installed")
    if device.type == "cuda":
        import triton
        parts.insert(0, f"GPU: {torch.cuda.get_device_name(device)}")
        parts.append(f"triton {triton.__version__}")
    else:
        parts.insert(0, "CPU")
    return ", ".join(parts)


if __name__ == "__main__":
    main()
