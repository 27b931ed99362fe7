"""ACE-Step graph mismatch: is the model itself graph-deterministic? (plain torch, no cachekern)"""
import sys, torch
sys.path.insert(0, "tests")
import tiny_models
from torch.nn.attention import sdpa_kernel, SDPBackend

def go(layer_types=None, backend=None):
    model, inputs, scale = tiny_models.ace_step(layer_types)
    model = model.cuda()
    inp = {k: v.cuda() for k, v in inputs(0).items()}
    inp["timestep"] = torch.full((2,), 0.7, device="cuda")
    def f():
        with torch.no_grad():
            return model(**inp, return_dict=False)[0]
    a = f(); b = f()
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2): f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = f()
    g.replay(); torch.cuda.synchronize()
    c = out.clone()
    print(f"layer_types={layer_types} backend={backend}: eager-eager max {(a-b).abs().max().item():.3g}, "
          f"graph-eager max {(c-a).abs().max().item():.3g}, equal={torch.equal(c, a)}")
    # per layer, with the hooks recording each layer's eager output
    outs = {}
    hooks = [l.register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o.clone()))
             for n, l in enumerate(model.layers)]
    f(); eager = dict(outs); g2 = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s):
        f()
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g2):
        f()
    g2.replay(); torch.cuda.synchronize()
    for n in sorted(eager):
        print(f"   layer {n} ({model.layer_types[n]}): graph-eager max {(outs[n]-eager[n]).abs().max().item():.3g}")
    for h in hooks: h.remove()

for lt in (None, ["full_attention"] * 3, ["sliding_attention"] * 3):
    go(lt)
for be in (SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION):
    try:
        with sdpa_kernel(be):
            go(None, be)
    except Exception as e:
        print(be, "failed:", type(e).__name__, str(e)[:200])
