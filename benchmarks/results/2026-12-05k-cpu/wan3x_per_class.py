"""wan-motion at 3x: the accumulator's schedule against the sweep's best, both Taylor order 2,
per class, on one held-out sample of each of the 16 classes (seeds 20000 on), batched."""
import torch, cachekern
from cachekern import reference_models, TeaCache
from cachekern.metrics import psnr
torch.set_num_threads(2)
ref = reference_models.load("wan-motion", torch.device("cpu"))
sch = ref.schedulers[0]; steps = ref.default_steps(sch); classes = ref.conditioner.num_classes
labels = list(range(classes)); seeds = [20000 + c for c in labels]
def run(): return ref.sample(labels, seeds, steps=steps, scheduler=sch).float()
base = run()
pats = {"sweep's best": "C.C...C...C...C...C...C...C..C", "accumulator's": "C..C...C...C....C...C..C.C.C.C"}
rows = {}
for name, p in pats.items():
    pol = TeaCache(compute_steps=[c == "C" for c in p], forecast_order=2, forecast_basis="taylor")
    with cachekern.patched(ref.model, pol):
        out = run()
    rows[name] = [psnr(base[i], out[i]) for i in range(classes)]
print("class " + " ".join(f"{c:6d}" for c in labels))
for name, ps in rows.items():
    print(f"{name[:5]:5s} " + " ".join(f"{x:6.2f}" for x in ps) + f"  mean {sum(ps)/len(ps):.2f}")
d = [a - b for a, b in zip(rows["accumulator's"], rows["sweep's best"])]
print("acc-sw " + " ".join(f"{x:+6.2f}" for x in d) + f"  mean {sum(d)/len(d):+.2f}")
