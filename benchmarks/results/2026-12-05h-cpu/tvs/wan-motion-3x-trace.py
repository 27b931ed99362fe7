import sys, torch, cachekern
from cachekern import reference_models
torch.set_num_threads(1)
name, speed = sys.argv[1], float(sys.argv[2])
ref = reference_models.load(name, torch.device("cpu"))
sch = ref.schedulers[0]; steps = ref.default_steps(sch); classes = ref.conditioner.num_classes
def run(seed): return ref.sample([seed % classes], [seed], steps=steps, scheduler=sch)
r = cachekern.tune(ref.model, run, speedup=speed, progress=False, calibration_seeds=(10000,),
                   evaluation_seeds=tuple(range(5000, 5000 + cachekern.tune.__globals__['evaluation_seed_count'](speed))))
print(name, speed, "pick", r.label, r.compute, r.psnr, r.generations, flush=True)
for i, row in enumerate(r.table):
    print(f"  {i:2d} {row['label'][:62]:62s} {row['compute']:.3f} lim {row['limit']:.3f} " + " ".join(f"{p:.2f}" for p in row['psnrs']) + f"  mean {row['psnr']:.2f}", flush=True)
