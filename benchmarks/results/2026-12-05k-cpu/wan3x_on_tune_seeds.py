"""wan-motion at 3x: the sweep's best schedule and the accumulator's, both Taylor order 2, on
the evaluation seeds given (one sample a seed, class seed % 16, as tune_vs_sweep's run does).
From the repository root: python wan3x_on_tune_seeds.py 5000,5001,5002,5003"""
import sys, torch, cachekern
from cachekern import reference_models, TeaCache
from cachekern.metrics import psnr
torch.set_num_threads(1)
ref = reference_models.load("wan-motion", torch.device("cpu"))
sch = ref.schedulers[0]; steps = ref.default_steps(sch); classes = ref.conditioner.num_classes
def run(seed): return ref.sample([seed % classes], [seed], steps=steps, scheduler=sch)
pats = {"sweepbest": "C.C...C...C...C...C...C...C..C", "acc": "C..C...C...C....C...C..C.C.C.C"}
seeds = [int(s) for s in sys.argv[1].split(",")]
refs = {s: run(s).float() for s in seeds}
for name, p in pats.items():
    cs = [c == "C" for c in p]
    pol = TeaCache(compute_steps=cs, forecast_order=2, forecast_basis="taylor")
    h = cachekern.patch(ref.model, pol)
    ps = []
    for s in seeds:
        h.reset(); ps.append(psnr(refs[s], run(s).float()))
    cachekern.unpatch(ref.model)
    print(name, p, " ".join(f"{x:.2f}" for x in ps), "mean %.2f" % (sum(ps)/len(ps)), flush=True)
