import torch, cachekern
from cachekern import reference_models
torch.set_num_threads(1)
ref = reference_models.load("flux-photos", torch.device("cpu"))
sch = ref.schedulers[0]; steps = ref.default_steps(sch); classes = ref.conditioner.num_classes
def run(seed): return ref.sample([seed % classes], [seed], steps=steps, scheduler=sch)
for seeds in ((5000, 5001), (5000, 5001, 5002, 5003)):
    r = cachekern.tune(ref.model, run, speedup=3.0, progress=False, calibration_seeds=(10000,), evaluation_seeds=seeds)
    print("seeds", seeds, "pick", r.label, r.compute, r.psnr, r.generations)
    for row in sorted(r.table, key=lambda x: -x["psnrs"][0]):
        print(f"  {row['label'][:60]:60s} {row['compute']:.3f} lim {row['limit']:.3f} " + " ".join(f"{p:.2f}" for p in row['psnrs']) + f"  mean {row['psnr']:.2f}")
