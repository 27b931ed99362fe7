import sys, math, torch, cachekern
from cachekern import reference_models
from cachekern.metrics import psnr
from cachekern.teacache.schedule_search import ForecastError, record_residuals_and_changes
torch.set_num_threads(1)
name = sys.argv[1]; pats = sys.argv[2:]
ref = reference_models.load(name, torch.device("cpu"))
sch = ref.schedulers[0]; steps = ref.default_steps(sch); classes = ref.conditioner.num_classes
def run(seed): return ref.sample([seed % classes], [seed], steps=steps, scheduler=sch)
def recs(seed):
    it = iter([seed]); r, _ = record_residuals_and_changes(ref.model, lambda: run(next(it)), 1, "x"); return r
cal, held = recs(10000), recs(5000)
with torch.no_grad(): reference = run(5000).float()
def forms(records):
    return {"taylor order 2": ForecastError(records, 2, "timestep", basis="taylor"),
            "lagrange order 1": ForecastError(records, 1, "timestep"),
            "fitted order 1": ForecastError(records, 1, "timestep", fitted=True),
            "fitted order 2": ForecastError(records, 2, "timestep", fitted=True)}
fc, fh = forms(cal), forms(held)
def heldout_err(fit, hold, compute):
    # weights fitted on cal, applied to held series
    tot, computed = 0.0, []
    for s, c in enumerate(compute):
        if c: computed.append(s); continue
        used = computed[-(fit.order+1):][::-1]
        if fit.fitted:
            w = fit.least_squares(s, used)[0]
        else:
            from cachekern.kernels.forecast import lagrange_weights, taylor_weights
            b = taylor_weights if fit.basis == "taylor" else lagrange_weights
            w = None
        for ser in hold.series.values():
            t, truth = ser[s]
            ww = w if w is not None else b([ser[u][0] for u in used], t)
            f = sum(a * ser[u][1] for a, u in zip(ww, used))
            tot += float((f - truth).pow(2).sum())
    return tot
for p in pats:
    compute = [ch == "C" for ch in p]
    for nm in fc:
        o = dict(compute_steps=compute, forecast_order=fc[nm].order)
        if nm.startswith("taylor"): o["forecast_basis"] = "taylor"
        if fc[nm].fitted: o["forecast_weights"] = fc[nm].fitted_weights(compute)
        cachekern.patch(ref.model, cachekern.TeaCache(**o))
        with torch.no_grad(): out = run(5000).float()
        cachekern.unpatch(ref.model)
        print(f"{p} {nm:17s} in {math.log10(fc[nm].total(compute)+1e-30):7.3f} held {math.log10(heldout_err(fc[nm], fh[nm], compute)+1e-30):7.3f} psnr5000 {psnr(reference, out):6.2f}", flush=True)
