"""cachekern.tune against the full quality sweep, on a reference model (issue 19).

    python -m benchmarks.tune_vs_sweep flux-photos --speedups 1.5 2 3 --out results/
    OMP_NUM_THREADS=1 python -m benchmarks.tune_vs_sweep unet-digits --samples 6   # on a CPU

The sweep: every cachekern setting benchmarks.quality tries (TeaCache's thresholds with each
polynomial and forecast, its static schedules, Block Caching's targets, scale-shifts and
forecasts), each generating the sweep's samples, scored against the uncached ones (PSNR, compute
as the block FLOPs that ran: benchmarks.block_work). Then, for each speed-up, cachekern.tune as a
user calls it (one sample a seed, on its own calibration and evaluation seeds, none of the
sweep's samples), and its pick generating the sweep's samples, scored the same way. The table:
the sweep's best PSNR within the compute 1/speed-up, against tune's pick, and what tuning cost
in uncached generations' block work (tune's own count, one sample a generation). Writes
tune_vs_sweep_<model>.csv (the sweep's rows and the picks) and .md.
"""

import argparse
import csv
import math
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks import quality
from benchmarks import quality_methods as methods
from benchmarks.block_work import BlockWork

import cachekern
from cachekern import reference_models
from cachekern.metrics import psnr
from cachekern.tune import evaluation_seed_count

CACHEKERN = (methods.TEACACHE, methods.TEACACHE_STATIC, methods.BLOCK_CACHING)
FIRST_EVALUATION_SEED = 5_000      # tune's evaluation seeds: none of the sweep's samples
FIRST_HOLDOUT_SEED = 20_000        # --holdout: samples neither tune nor the sweep chose on
TUNE_CALIBRATION_SEEDS = (10_000,)
SLACK = 1e-9
FIELDS = ("model", "scheduler", "method", "setting", "compute", "psnr_db", "speedup",
          "tune_compute", "tune_psnr_db", "generations", "uncached_generations", "tune_s",
          "holdout", "best_holdout", "holdout_gap_se")


def applying(policy):
    def apply(model):
        cachekern.patch(model, policy)
        return lambda: cachekern.unpatch(model)
    return apply


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(reference_models.RECIPES))
    parser.add_argument("--scheduler", default=None, help="default: the recipe's first")
    parser.add_argument("--speedups", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    parser.add_argument("--per-class", type=int, default=4, help="the sweep's samples per class")
    parser.add_argument("--samples", type=int, default=None,
                        help="instead of --per-class: this many samples, classes in turn")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", default=".")
    parser.add_argument("--device", default=None)
    parser.add_argument("--untrained", action="store_true", help="random weights (smoke runs)")
    parser.add_argument("--quick", action="store_true", help="a few sweep settings (smoke runs)")
    parser.add_argument("--sweep-from", default=None, metavar="CSV",
                        help="take the sweep's rows from this file, written by this command "
                             "with the same model, samples and settings (the picks are made "
                             "and measured again)")
    parser.add_argument("--evaluation-seeds", type=int, default=None,
                        help=f"how many evaluation seeds tune gets ({FIRST_EVALUATION_SEED} on; "
                             f"default: as many as tune takes by default at each speed-up)")
    parser.add_argument("--max-generations", type=float, default=12.0,
                        help="tune's budget, in uncached generations")
    parser.add_argument("--all", action="store_true",
                        help="also the settings built to run above every budget (static "
                             "schedules, Block Caching targets), left out by default")
    parser.add_argument("--holdout", type=int, default=0, metavar="N",
                        help="also score tune's pick and the sweep's best on N fresh samples "
                             f"(seeds {FIRST_HOLDOUT_SEED} on): the sweep chose its best on "
                             "the samples it is scored on, tune did not")
    args = parser.parse_args(argv)
    if args.holdout < 0:
        parser.error(f"--holdout: expected a count of samples, 0 or more, got {args.holdout}")
    if args.samples is not None and args.samples < 1:
        parser.error(f"--samples: expected at least 1, got {args.samples}")
    if args.evaluation_seeds is not None and args.evaluation_seeds < 1:
        parser.error(f"--evaluation-seeds: expected at least 1, got {args.evaluation_seeds}")
    if any(s <= 1 for s in args.speedups):
        parser.error(f"--speedups: expected numbers > 1, got {args.speedups}")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cuda.matmul.allow_tf32 = False    # fp32 throughout: quality, not speed
    torch.backends.cudnn.allow_tf32 = False
    ref = (reference_models.create(args.name, device) if args.untrained else
           reference_models.load(args.name, device))
    scheduler = args.scheduler or ref.schedulers[0]
    if scheduler not in ref.schedulers:
        parser.error(f"--scheduler: {args.name} samples with one of {ref.schedulers}")
    sample_kwargs = dict(scheduler=scheduler)
    steps = ref.default_steps(scheduler)
    classes = ref.conditioner.num_classes
    labels = [c for c in range(classes) for _ in range(args.per_class)] if args.samples is None \
        else [i % classes for i in range(args.samples)]
    seeds = list(range(len(labels)))
    calibration = dict(labels=labels[:args.batch],
                       seeds=[10_000 + s for s in range(len(labels[:args.batch]))])
    work = BlockWork(ref.model, ref.example_call(device))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"tune_vs_sweep_{args.name}"
    rows = []

    def write():            # as it goes: a run cut short keeps what it measured
        with open(f"{stem}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows + picks)

    def run(seed):          # as a user runs it: one sample a seed
        return ref.sample([seed % classes], [seed], steps=steps, **sample_kwargs)

    # The uncached samples first (the sweep's first setting), then tune's picks, then the rest.
    # The held-out scores need the sweep's settings themselves, not only its rows.
    settings = methods.uncached(steps) if args.sweep_from is not None and not args.holdout \
        else quality.settings_for(ref, steps, sample_kwargs, calibration, args.quick,
                                  set(CACHEKERN))
    if not args.all:    # what cannot be within any budget asked for is not run
        ceiling = 1 / min(args.speedups) + quality.BUDGET_SLACK
        settings = [s for s in settings if (fixed_compute(s) or 0.0) <= ceiling]
    swept = []
    if args.sweep_from is not None:      # checked before anything runs
        with open(args.sweep_from, newline="") as f:
            earlier = [r for r in csv.DictReader(f) if not r["method"].startswith("tune")]
        if len(earlier) < 2 or earlier[0]["model"] != args.name or \
                earlier[0]["scheduler"] != scheduler:
            parser.error(f"--sweep-from: {args.sweep_from} is not this command's sweep of "
                         f"{args.name} with {scheduler}")
        swept = [dict(r, compute=float(r["compute"]), psnr_db=float(r["psnr_db"]))
                 for r in earlier[1:]]
    measure, (compute, value) = scorer(ref, settings[0], labels, seeds, args.batch,
                                       sample_kwargs, work, device)
    rows.append(dict(model=args.name, scheduler=scheduler, method=settings[0].method,
                     setting=settings[0].label, compute=compute, psnr_db=value))
    picks, made = [], {}
    for speedup in args.speedups:
        started = time.perf_counter()
        result = cachekern.tune(ref.model, run, speedup=speedup, progress=False,
                                calibration_seeds=TUNE_CALIBRATION_SEEDS,
                                evaluation_seeds=tuple(range(
                                    FIRST_EVALUATION_SEED, FIRST_EVALUATION_SEED +
                                    (args.evaluation_seeds or evaluation_seed_count(
                                        speedup, args.max_generations,
                                        len(TUNE_CALIBRATION_SEEDS))))),
                                max_generations=args.max_generations)
        spent = time.perf_counter() - started
        made[speedup] = methods.Setting(f"tune {speedup:g}x", result.label, steps,
                                        applying(result.policy))
        compute, value, _ = measure(made[speedup])
        picks.append(dict(model=args.name, scheduler=scheduler,
                          method=f"tune: {result.method}", setting=result.label,
                          compute=compute, psnr_db=value, speedup=speedup,
                          tune_compute=result.compute, tune_psnr_db=result.psnr,
                          generations=result.generations,
                          uncached_generations=result.uncached_generations, tune_s=spent))
        print(f"{speedup:g}x: tune picked {result.label} (compute {compute:.3f}, PSNR "
              f"{value:.2f} dB on the sweep's samples; {result.generations:.1f} generations, "
              f"{spent:.0f} s)", flush=True)
        write()
    started = time.perf_counter()
    if args.sweep_from is not None:
        rows += swept
    for setting in [] if args.sweep_from is not None else settings[1:]:
        compute, value, _ = measure(setting)
        rows.append(dict(model=args.name, scheduler=scheduler, method=setting.method,
                         setting=setting.label, compute=compute, psnr_db=value))
        write()
    print(f"sweep: {len(rows) - 1} settings in {time.perf_counter() - started:.0f} s",
          flush=True)
    for pick in picks:
        within = [r for r in rows if r["method"] != methods.UNCACHED and
                  r["compute"] <= 1 / pick["speedup"] + SLACK]
        pick["best"] = max(within, key=lambda r: r["psnr_db"]) if within else None
    if args.holdout:
        held_out(ref, picks, made, settings, args.holdout, args.batch, sample_kwargs, work,
                 device)

    write()
    command = "python -m benchmarks.tune_vs_sweep " + " ".join(
        argv if argv is not None else sys.argv[1:])
    table = markdown(picks, args.name, scheduler, steps, len(labels), len(rows) - 1,
                     quality.environment_line(device), command, args.holdout)
    Path(f"{stem}.md").write_text(table)
    print(table)
    return picks


def scorer(ref, uncached, labels, seeds, batch, sample_kwargs, work, device):
    """Generates the uncached samples, then (score, the uncached setting's own score):
    score(setting) is (compute as a share of the uncached block FLOPs, mean PSNR against the
    uncached samples, each sample's PSNR) of `setting` on the same samples."""
    reference, full, _ = quality.generate(ref, uncached, labels, seeds, batch, sample_kwargs,
                                          work, device, 0)

    def score(setting):
        images, flops, _ = quality.generate(ref, setting, labels, seeds, batch, sample_kwargs,
                                            work, device, 0)
        values = quality.per_sample(psnr, reference, images, data_range=2.0)
        return flops / full, sum(values) / len(values), values
    return score, (1.0, quality.per_sample_mean(psnr, reference, reference, data_range=2.0))


def held_out(ref, picks, made, settings, count, batch, sample_kwargs, work, device):
    """Each pick's and its sweep's best's PSNR and compute on `count` fresh samples
    (pick["holdout"], pick["best_holdout"]: (compute, PSNR)), and the standard error of their
    difference (pick["holdout_gap_se"], from the per-sample differences: one sample's PSNR
    can differ between two settings by several dB either way). The sweep's best is the maximum
    over hundreds of settings scored on the very samples it was chosen on, which flatters it;
    neither was chosen on these. An online threshold's compute moves with the samples."""
    classes = ref.conditioner.num_classes
    labels = [i % classes for i in range(count)]
    seeds = [FIRST_HOLDOUT_SEED + i for i in range(count)]
    by_label = {(s.method, s.label): s for s in settings}
    score, _ = scorer(ref, settings[0], labels, seeds, batch, sample_kwargs, work, device)
    for pick in picks:
        compute, value, tune_values = score(made[pick["speedup"]])
        pick["holdout"] = (compute, value)
        best = pick["best"]
        setting = None if best is None else by_label.get((best["method"], best["setting"]))
        if setting is None and best is not None:
            raise ValueError(f"--holdout: the sweep's best {best['method']}: {best['setting']} "
                             f"is not among this command's settings (--all or --quick differ "
                             f"from the sweep's run?)")
        pick["best_holdout"], pick["holdout_gap_se"] = None, None
        if setting is not None:
            compute, value, best_values = score(setting)
            pick["best_holdout"] = (compute, value)
            pick["holdout_gap_se"] = paired_standard_error(tune_values, best_values)
        print(f"{pick['speedup']:g}x held out ({count} samples): tune {_pair(pick['holdout'])}"
              f", the sweep's best {_pair(pick['best_holdout'])}", flush=True)


def paired_standard_error(a, b):
    """The standard error of mean(a) - mean(b) over paired samples; None below two."""
    if len(a) != len(b):
        raise ValueError(f"paired_standard_error: expected as many samples in each, got "
                         f"{len(a)} and {len(b)}")
    if len(a) < 2:
        return None
    return statistics.stdev([x - y for x, y in zip(a, b)]) / math.sqrt(len(a))


def _pair(measured):
    return "—" if measured is None else f"{measured[1]:.2f} dB at {measured[0]:.3f}"


def fixed_compute(setting):
    """The compute a setting is built to run at, where that is fixed in advance (a static
    schedule's share of computed steps, Block Caching's target); None for the others."""
    if setting.method == methods.TEACACHE_STATIC:
        pattern = setting.label.split()[0]
        return pattern.count("C") / len(pattern)
    found = re.search(r"target_compute=([0-9.]+)", setting.label)
    return float(found.group(1)) if found else None


def _held_out_cell(p):
    tune, best = p["holdout"], p.get("best_holdout")
    se = p.get("holdout_gap_se")
    gap = "—" if best is None else f"{tune[1] - best[1]:+.2f}" + (
        "" if se is None else f" ± {se:.2f}")
    return f" {_pair(tune)}; {_pair(best)}; {gap} |"


def markdown(picks, name, scheduler, steps, samples, settings, environment, command,
             holdout=0):
    lines = [f"#### {name}, {scheduler}, {steps} steps, {samples} samples; the sweep: "
             f"{settings} cachekern settings", "", f"`{command}`", "", environment, "",
             "| speed-up | tune's pick | compute | PSNR dB | the sweep's best within the "
             "compute | compute | PSNR dB | tune − best, dB | tuning cost, generations |"
             + (" held out: tune; best; tune − best ± its standard error, dB |"
                if holdout else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if holdout else "")]
    for p in picks:
        best = p["best"]
        gap = float("nan") if best is None else p["psnr_db"] - best["psnr_db"]
        lines.append(
            f"| {p['speedup']:g}× | {p['method'][6:]}: `{p['setting']}` | {p['compute']:.3f} | "
            f"{p['psnr_db']:.2f} | "
            + ("— | — | — | — |" if best is None else
               f"{best['method'][10:]}: `{best['setting']}` | {best['compute']:.3f} | "
               f"{best['psnr_db']:.2f} | {gap:+.2f} |")
            + f" {p['generations']:.1f} ({p['uncached_generations']} uncached) |"
            + (_held_out_cell(p) if holdout else ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
