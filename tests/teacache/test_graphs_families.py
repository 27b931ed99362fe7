"""TeaCache(cuda_graphs=True) on a tiny config of every supported family (GPU): each call after
a branch's first replays one CUDA graph that decides on the device (the whole forward, or, for
a family whose forward reads the host, its block stack inside the eager forward), and two
generations in a row give the eager path's outputs, decisions and counts bit for bit, with
online thresholds, forecasts, static schedules and per-sample decisions alike. A family whose
blocks themselves read the host is refused at patch time."""

import pytest
import torch

import cachekern
from cachekern import TeaCache
from cachekern.models.registry import adapter_for

pytest.importorskip("diffusers")
from tiny_models import FAMILIES, FAMILY_STEPS, on_device, sample_family  # noqa: E402

SETTINGS = {
    "threshold": dict(threshold=0.4),
    "forecast": dict(threshold=0.4, forecast_order=2),
    "static": dict(compute_steps=[True, True, False, True, False, True], forecast_order=1),
    "per_sample": dict(threshold=0.4, decision="per_sample"),
}


@pytest.mark.gpu
@pytest.mark.parametrize("settings", sorted(SETTINGS))
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_every_family_graphs_bit_for_bit(family, settings):
    model, inputs, scale = on_device(family, "cuda")
    if adapter_for(model).stack_graph_uncapturable:     # said at patch time, before any call
        with pytest.raises(ValueError, match="cuda_graphs=True needs a family whose block stack"):
            cachekern.patch(model, TeaCache(cuda_graphs=True))
        return
    runs = {}
    for graphs in (False, True):
        policy = TeaCache(coefficients=None, num_inference_steps=FAMILY_STEPS,
                          cuda_graphs=graphs, **SETTINGS[settings])
        with cachekern.patched(model, policy) as handle:
            outputs = torch.stack([sample_family(model, inputs(seed), timestep_scale=scale)
                                   for seed in (1, 2)])
            captured = len(handle._graphs)
        runs[graphs] = (outputs, repr(handle.history), handle.stats())
    (eager, eager_history, eager_stats), (graphed, history, stats) = runs[False], runs[True]
    assert captured == 1
    assert history == eager_history
    assert stats["skipped"] == eager_stats["skipped"]
    assert torch.equal(graphed, eager)
