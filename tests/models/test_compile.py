"""torch.compile and a patched model, in the orders users take. Regional compilation (diffusers'
compile_repeated_blocks, before or after patch) compiles every block once, with no graph break
inside a block and no recompilation from one generation to the next: the cache decides between
blocks, in eager Python. Compiling the whole model also works; its graphs break where the cache
reads its decision, and stop growing once each path has run."""

import pytest
import torch

import cachekern

from tiny_models import flux, on_device, sample_family  # noqa: E402

STEPS = 6


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def counted():
    counters = torch._dynamo.utils.counters
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def policies(model, inputs, scale):
    profile = cachekern.profile(model, lambda: sample_family(model, inputs(7),
                                                             timestep_scale=scale))
    return {"teacache": lambda: cachekern.TeaCache(threshold=0.3, num_inference_steps=STEPS,
                                                   coefficients=None),
            "blockcaching": lambda: cachekern.BlockCaching(profile, target_compute=0.5,
                                                           scale_shift=None, forecast_order=1)}


def generations(model, inputs, scale, seeds=(1, 2, 3)):
    """Each generation's output and the compiled graphs counted after it."""
    out = []
    for seed in seeds:
        result = sample_family(model, inputs(seed), timestep_scale=scale)
        out.append((result, counted()))
    return out


@pytest.mark.parametrize("method,order,backend", [
    ("teacache", "compile_then_patch", "inductor"),
    ("teacache", "patch_then_compile", "aot_eager"),
    ("blockcaching", "compile_then_patch", "aot_eager"),
    ("blockcaching", "patch_then_compile", "inductor")])
def test_regional_compilation_compiles_each_block_once(method, order, backend):
    model, inputs, scale = flux()
    make = policies(model, inputs, scale)[method]
    with cachekern.patched(model, make()):
        eager = [sample_family(model, inputs(s), timestep_scale=scale) for s in (1, 2, 3)]
    if order == "compile_then_patch":
        model.compile_repeated_blocks(backend=backend, fullgraph=True)
        handle = cachekern.patch(model, make())
    else:
        handle = cachekern.patch(model, make())
        model.compile_repeated_blocks(backend=backend, fullgraph=True)
    runs = generations(model, inputs, scale)
    cachekern.unpatch(model)
    reused = handle.stats()["skipped" if method == "teacache" else "blocks_reused"]
    assert reused > 0
    for (compiled, _), expected in zip(runs, eager):
        if backend == "inductor":
            torch.testing.assert_close(compiled, expected, rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(compiled, expected)
    graphs = [c for _, c in runs]
    assert all(breaks == 0 for _, breaks in graphs)            # none inside a block
    assert graphs[0][0] > 0 and graphs[0] == graphs[-1]        # no recompilation afterwards


@pytest.mark.parametrize("order", ["patch_then_torch_compile", "module_compile_then_patch"])
def test_whole_model_compilation_matches_eager_and_stops_compiling(order):
    model, inputs, scale = flux()
    make = policies(model, inputs, scale)["teacache"]
    with cachekern.patched(model, make()):
        eager = [sample_family(model, inputs(s), timestep_scale=scale) for s in (1, 2, 3, 4)]
    if order == "patch_then_torch_compile":
        handle = cachekern.patch(model, make())
        compiled = torch.compile(model, backend="aot_eager")
    else:
        model.compile(backend="aot_eager")
        handle = cachekern.patch(model, make())
        compiled = model
    runs = generations(compiled, inputs, scale, seeds=(1, 2, 3, 4))
    assert handle.stats()["skipped"] > 0
    for (out, _), expected in zip(runs, eager):
        assert torch.equal(out, expected)
    graphs = [c[0] for _, c in runs]
    assert graphs[2] == graphs[3]        # once every decision path has run, nothing recompiles
    cachekern.unpatch(model)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["teacache", "blockcaching"])
def test_compiled_blocks_inside_cuda_graphs_equal_the_compiled_eager_run(method):
    """Regional compilation (inductor) and cuda_graphs=True together: the graphs capture the
    compiled blocks, and give the compiled eager patched run's outputs bit for bit."""
    model, inputs, scale = on_device(flux, "cuda")
    profile = cachekern.profile(model, lambda: sample_family(model, inputs(7),
                                                             timestep_scale=scale))
    model.compile_repeated_blocks(backend="inductor", fullgraph=True)

    def make(graphs):
        if method == "teacache":
            return cachekern.TeaCache(threshold=0.3, num_inference_steps=STEPS,
                                      coefficients=None, cuda_graphs=graphs)
        return cachekern.BlockCaching(profile, target_compute=0.5, scale_shift=None,
                                      forecast_order=1, cuda_graphs=graphs)
    runs = {}
    for graphs in (False, True):
        with cachekern.patched(model, make(graphs)) as handle:
            outputs = torch.stack([sample_family(model, inputs(s), timestep_scale=scale)
                                   for s in (1, 2, 3)])
            runs[graphs] = (outputs, handle.stats(), len(handle._graphs))
    (eager, eager_stats, _), (graphed, stats, captured) = runs[False], runs[True]
    counted = "skipped" if method == "teacache" else "blocks_reused"
    assert captured > 0 and 0 < stats[counted] == eager_stats[counted]
    assert torch.equal(graphed, eager)
