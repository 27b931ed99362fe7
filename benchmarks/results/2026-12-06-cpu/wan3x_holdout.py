"""wan-motion at 3x: tune's pick (the accumulator's schedule) against the sweep's best schedule,
both Taylor order 2, on held-out samples as tune_vs_sweep --holdout draws them (sample i: seed
20000 + i, class i % 16), batched; one line a sample to stdout, appended as it goes.
From the repository root: python wan3x_holdout.py FIRST COUNT BATCH"""
import sys, time, torch, cachekern
from cachekern import reference_models, TeaCache
from cachekern.metrics import psnr
torch.set_num_threads(1)
first, count, batch = (int(a) for a in sys.argv[1:4])
ref = reference_models.load("wan-motion", torch.device("cpu"))
sch = ref.schedulers[0]; steps = ref.default_steps(sch); classes = ref.conditioner.num_classes
pats = {"pick": "C..C...C...C....C...C..C.C.C.C", "best": "C.C...C...C...C...C...C...C..C"}
policies = {n: TeaCache(compute_steps=[c == "C" for c in p], forecast_order=2,
                        forecast_basis="taylor") for n, p in pats.items()}
print("index seed class pick_db best_db pick_minus_best", flush=True)
for start in range(first, first + count, batch):
    t = time.perf_counter()
    idx = list(range(start, min(start + batch, first + count)))
    labels = [i % classes for i in idx]; seeds = [20000 + i for i in idx]
    def run(): return ref.sample(labels, seeds, steps=steps, scheduler=sch).float()
    base = run()
    got = {}
    for n, pol in policies.items():
        with cachekern.patched(ref.model, pol):
            out = run()
        got[n] = [psnr(base[k], out[k]) for k in range(len(idx))]
    for k, i in enumerate(idx):
        print(f"{i} {seeds[k]} {labels[k]} {got['pick'][k]:.3f} {got['best'][k]:.3f} "
              f"{got['pick'][k] - got['best'][k]:+.3f}", flush=True)
    print(f"# batch {idx[0]}-{idx[-1]}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
