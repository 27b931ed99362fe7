"""BlockCaching(cuda_graphs=True) (GPU): after one eager generation, each step's call is captured
once and replayed (for a family whose forward reads the host, its block stack alone);
generations give the eager ones' outputs and counts bit for bit on a tiny config of every
family, with forecasts and fitted parameters; a new resolution runs eagerly again, then captures
anew. On the CPU it changes nothing (the stack-graphed families' stand-in stack included); a
device budget is refused."""

import pytest
import torch

import cachekern
from cachekern import BlockCaching
from cachekern.models.registry import adapter_for

pytest.importorskip("diffusers")
from tiny_models import FAMILIES, FAMILY_STEPS, flux, on_device, sample_family  # noqa: E402


def generations(model, inputs, scale, seeds=(1, 2, 3)):
    return torch.stack([sample_family(model, inputs(seed), timestep_scale=scale)
                        for seed in seeds])


def profiled(model, inputs, scale):
    return cachekern.profile(model, lambda: sample_family(model, inputs(7), timestep_scale=scale))


@pytest.mark.gpu
@pytest.mark.parametrize("settings", [dict(scale_shift=None),
                                      dict(scale_shift=None, forecast_order=2)],
                         ids=["reuse", "forecast"])
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_every_family_graphs_bit_for_bit(family, settings):
    model, inputs, scale = on_device(family, "cuda")
    profile = profiled(model, inputs, scale)
    if adapter_for(model).stack_graph_uncapturable:      # said at patch time, before any call
        with pytest.raises(ValueError, match="block stack can be captured"):
            cachekern.patch(model, BlockCaching(profile, cuda_graphs=True))
        return
    runs = {}
    for graphs in (False, True):
        policy = BlockCaching(profile, target_compute=0.5, cuda_graphs=graphs, **settings)
        with cachekern.patched(model, policy) as handle:
            runs[graphs] = (generations(model, inputs, scale), handle.stats(),
                            len(handle._graphs))
    (eager, eager_stats, _), (graphed, stats, captured) = runs[False], runs[True]
    assert captured == FAMILY_STEPS
    assert 0 < stats["blocks_reused"] == eager_stats["blocks_reused"]
    assert stats == eager_stats
    assert torch.equal(graphed, eager)


@pytest.mark.gpu
def test_fitted_parameters_and_a_new_resolution():
    model, inputs, scale = on_device(flux, "cuda")
    profile = profiled(model, inputs, scale)
    cachekern.fit_scale_shift(profile, model,
                              lambda: sample_family(model, inputs(8), timestep_scale=scale),
                              target_compute=0.5)
    wide = lambda seed: dict(inputs(seed, batch=3))     # noqa: E731  another batch: a new signature
    runs = {}
    for graphs in (False, True):
        policy = BlockCaching(profile, target_compute=0.5, scale_shift="fit", cuda_graphs=graphs)
        with cachekern.patched(model, policy) as handle:
            first = generations(model, inputs, scale)
            second = generations(model, wide, scale)
            third = generations(model, inputs, scale, seeds=(4, 5))
            runs[graphs] = (first, second, third, len(handle._graphs))
    for eager, graphed in zip(runs[False][:3], runs[True][:3]):
        assert torch.equal(graphed, eager)
    assert runs[True][3] == FAMILY_STEPS


def test_on_the_cpu_graphs_change_nothing_and_a_budget_is_refused():
    model, inputs, scale = flux()
    profile = profiled(model, inputs, scale)
    outs = []
    for graphs in (False, True):
        with cachekern.patched(model, BlockCaching(profile, target_compute=0.5,
                                                   scale_shift=None, cuda_graphs=graphs)):
            outs.append(generations(model, inputs, scale, seeds=(1, 2)))
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(ValueError, match="cuda_graphs"):
        BlockCaching(profile, cuda_graphs=True, device_budget_bytes=1 << 20)
    with pytest.raises(ValueError, match="cuda_graphs: expected True or False"):
        BlockCaching(profile, cuda_graphs=1)


STACK_GRAPHED = [f for f in FAMILIES if adapter_for(f()[0]).graph_uncapturable]


@pytest.mark.parametrize("family", STACK_GRAPHED, ids=lambda f: f.__name__)
def test_on_the_cpu_the_stack_graphed_families_give_the_eager_outputs(family):
    """Where only the stack is graphed, the forward runs with the stack standing in for the
    block lists (the adapter runs the blocks): on the CPU, where nothing is captured, it gives
    the model's own loop's outputs and counts bit for bit; a family whose stack cannot be
    captured either is refused at patch time."""
    model, inputs, scale = family()
    profile = profiled(model, inputs, scale)
    reason = adapter_for(model).stack_graph_uncapturable
    if reason:
        with pytest.raises(ValueError, match="cuda_graphs=True needs a family whose block stack"):
            cachekern.patch(model, BlockCaching(profile, cuda_graphs=True))
        return
    runs = []
    for graphs in (False, True):
        with cachekern.patched(model, BlockCaching(profile, target_compute=0.5, scale_shift=None,
                                                   cuda_graphs=graphs)) as handle:
            runs.append((generations(model, inputs, scale, seeds=(1, 2)), handle.stats()))
            assert handle._stack_graphs == graphs
    assert 0 < runs[1][1]["blocks_reused"]
    assert runs[0][1] == runs[1][1]
    assert torch.equal(runs[0][0], runs[1][0])
