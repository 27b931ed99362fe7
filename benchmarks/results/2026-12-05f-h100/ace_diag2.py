"""ACE-Step: where does cachekern's capture differ from eager? (refusal lifted for the diagnosis)"""
import sys, torch
sys.path.insert(0, "tests")
import tiny_models
from tiny_models import FAMILY_STEPS, sample_family
import cachekern
from cachekern import TeaCache, BlockCaching
from cachekern.models.ace_step import AceStepAdapter

def fam(lt):
    def build():
        return tiny_models.ace_step(lt)
    return build

def bare_refresh(lt):
    model, inputs, scale = tiny_models.on_device(fam(lt), "cuda")
    A, B = inputs(1), inputs(2)
    for d in (A, B):
        d["timestep"] = torch.full((2,), 0.7, device="cuda")
    static = {k: v.clone() for k, v in A.items()}
    f = lambda: model(**static, return_dict=False)[0]
    with torch.no_grad():
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2): f()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = f()
        for k in static: static[k].copy_(B[k])
        g.replay(); torch.cuda.synchronize()
        ref = model(**B, return_dict=False)[0]
    print(f"bare, refreshed inputs, layer_types={lt}: equal={torch.equal(out, ref)} max {(out-ref).abs().max().item():.3g}", flush=True)

def run(lt, mode, method):
    AceStepAdapter.graph_uncapturable = "diag" if mode == "stack" else ""
    AceStepAdapter.stack_graph_uncapturable = ""
    model, inputs, scale = tiny_models.on_device(fam(lt), "cuda")
    prof = None
    if method.startswith("bc"):
        prof = cachekern.profile(model, lambda: sample_family(model, inputs(7), timestep_scale=scale))
    res = {}
    for graphs in (False, True):
        if method == "tea":
            pol = TeaCache(coefficients=None, num_inference_steps=FAMILY_STEPS, cuda_graphs=graphs, threshold=0.4)
        elif method == "tea_never":
            pol = TeaCache(coefficients=None, num_inference_steps=FAMILY_STEPS, cuda_graphs=graphs, threshold=0.0)
        else:
            pol = BlockCaching(prof, target_compute=0.5, cuda_graphs=graphs, scale_shift=None)
        with cachekern.patched(model, pol) as h:
            outs = torch.stack([sample_family(model, inputs(seed), timestep_scale=scale) for seed in (1, 2)])
            res[graphs] = (outs, h.stats())
    e, g = res[False][0], res[True][0]
    d = (e - g).abs().flatten(2).amax(-1)   # seed x step
    print(f"{mode:5s} {method:9s} layer_types={lt}: equal={torch.equal(e, g)} stats_equal={res[False][1]==res[True][1]}", flush=True)
    print("   per seed/step max diff:", [[f"{x:.2g}" for x in row] for row in d.tolist()], flush=True)

for lt in (None, ["full_attention"] * 3, ["sliding_attention"] * 3):
    try: bare_refresh(lt)
    except Exception as ex: print("bare failed", lt, type(ex).__name__, str(ex)[:300])
for lt in (None, ["full_attention"] * 3):
    for mode in ("whole", "stack"):
        for method in ("tea_never", "tea", "bc"):
            try: run(lt, mode, method)
            except Exception as ex: print("FAILED", lt, mode, method, type(ex).__name__, str(ex)[:400], flush=True)
