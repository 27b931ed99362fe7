"""TeaCache(cuda_graphs=True) on a tiny FluxTransformer2DModel: every call after a branch's first
replays one CUDA graph that decides on the device (cachekern.teacache.graphs). It must take the
eager path's decisions and give its outputs bit for bit, across generations, CFG branches, an
eager call in between and re-patching, with no host synchronisation (GPU); on the CPU it changes
nothing; what it cannot serve gets a clear error."""

import pytest
import torch

import cachekern
from cachekern import TeaCache
diffusers = pytest.importorskip("diffusers")

from tiny_models import call, hidream, lumina2, make_inputs, tiny_flux  # noqa: E402
from tiny_models import sample_family  # noqa: E402
from tiny_models import flux_sample as sample  # noqa: E402

STEPS = 8


def policy(cuda_graphs, threshold=0.3):
    return TeaCache(threshold=threshold, coefficients=None, num_inference_steps=STEPS,
                    cuda_graphs=cuda_graphs)


def branched(model, inp):
    """Two generations in a row with CFG as a pipeline runs it: a "cond" and an "uncond" call
    per step, each in its cache_context."""
    outputs = []
    for seed_shift in (0.0, 0.5):
        latents = inp["x"].clone() + seed_shift
        with torch.no_grad():
            for t in torch.linspace(1.0, 0.05, STEPS, device=latents.device):
                with model.cache_context("cond"):
                    cond = call(model, inp, latents, t)
                with model.cache_context("uncond"):
                    uncond = call(model, dict(inp, enc=inp["enc"] * 0), latents, t)
                latents = latents - (1.0 / STEPS) * (uncond + 2.0 * (cond - uncond))
                outputs += [cond, uncond]
    return torch.stack(outputs)


def ungraphable_call(model, inp, latents, t):
    """A call no graph can replay, so it runs eagerly: an attention argument that is not a
    tensor or a plain value (which the attention processors ignore with a warning)."""
    return model(latents, encoder_hidden_states=inp["enc"], pooled_projections=inp["pooled"],
                 timestep=t.expand(latents.shape[0]), img_ids=inp["img_ids"],
                 txt_ids=inp["txt_ids"], joint_attention_kwargs={"unused": object()},
                 return_dict=False)[0]


def generate_with_an_eager_call(model, inp, p, eager_at, check_syncs):
    """One generation of STEPS calls under policy `p`; call `eager_at` cannot be replayed (it
    runs eagerly, between graphed ones). With check_syncs every other call from the third on
    (the branch's graph captured at the second) must make no host synchronisation. Returns
    (outputs, history, stats, graphs held)."""
    with cachekern.patched(model, p) as handle:
        outputs, latents = [], inp["x"].clone()
        with torch.no_grad():
            for i, t in enumerate(torch.linspace(1.0, 0.05, STEPS, device="cuda")):
                if i == eager_at:
                    out = ungraphable_call(model, inp, latents, t)
                elif check_syncs and i >= 2:
                    torch.cuda.set_sync_debug_mode("error")
                    try:
                        out = call(model, inp, latents, t)
                    finally:
                        torch.cuda.set_sync_debug_mode(0)
                else:
                    out = call(model, inp, latents, t)
                latents = latents - (1.0 / STEPS) * out
                outputs.append(out)
        captured = len(handle._graphs)
    return torch.stack(outputs), [dict(h) for h in handle.history], handle.stats(), captured


@pytest.mark.gpu
@pytest.mark.parametrize("threshold", [0.0, 0.3, 1e9])
def test_graphs_give_the_eager_decisions_and_outputs_bit_for_bit(threshold):
    model = tiny_flux(device="cuda")
    inp = make_inputs(1, device="cuda")
    runs = {}
    for graphs in (False, True):
        with cachekern.patched(model, policy(graphs, threshold)) as handle:
            outputs, captured = branched(model, inp), len(handle._graphs)
        # Read after unpatch: the graphed calls' records were collected on the way out.
        runs[graphs] = (outputs, [dict(h) for h in handle.history], handle.stats(), captured)
    (eager, eager_history, eager_stats, _), (graphed, graphed_history, stats, captured) = \
        runs[False], runs[True]
    assert torch.equal(graphed, eager)
    assert repr(graphed_history) == repr(eager_history)  # NaN-safe (rel_l1 of a first call)
    assert stats["skipped"] == eager_stats["skipped"]
    if threshold > 0:
        assert stats["skipped"] > 0 and captured == 2         # one set of graphs per branch
    uncached = branched(model, inp)
    if threshold == 0:
        assert torch.equal(graphed, uncached)


FITTED = [None, None, [1.25, -0.25], None, [0.75, 0.5, -0.25], [1.0], None, None]
FORECASTS = [
    dict(threshold=0.3, forecast_order=1),
    dict(threshold=0.3, forecast_order=2),
    dict(threshold=0.3, forecast_order=2, forecast_basis="taylor", forecast_time="step"),
    dict(compute_steps=[True, True, False, True, False, False, True, False]),
    dict(compute_steps=[True, True, False, True, False, False, True, False], forecast_order=2),
    dict(compute_steps=[True, True, False, True, False, False, True, False], forecast_order=2,
         forecast_weights=FITTED),
]


@pytest.mark.gpu
@pytest.mark.parametrize("settings", FORECASTS)
def test_graphed_forecasts_and_static_schedules_equal_eager_bit_for_bit(settings):
    model = tiny_flux(device="cuda")
    inp = make_inputs(2, device="cuda")
    runs = {}
    for graphs in (False, True):
        p = TeaCache(coefficients=None, num_inference_steps=STEPS, cuda_graphs=graphs,
                     **settings)
        with cachekern.patched(model, p) as handle:
            outputs, captured = branched(model, inp), len(handle._graphs)
        runs[graphs] = (outputs, [dict(h) for h in handle.history], handle.stats(), captured)
    (eager, eager_history, eager_stats, _), (graphed, history, stats, captured) = \
        runs[False], runs[True]
    assert captured == 2 and 0 < stats["skipped"] == eager_stats["skipped"]
    assert repr(history) == repr(eager_history)
    assert torch.equal(graphed, eager)


@pytest.mark.gpu
def test_a_graphed_forecast_hands_its_history_to_an_eager_call_and_back():
    model = tiny_flux(device="cuda")
    inp = make_inputs(1, device="cuda")

    def run(graphs):
        p = TeaCache(threshold=0.3, coefficients=None, num_inference_steps=STEPS,
                     forecast_order=2, cuda_graphs=graphs)
        return generate_with_an_eager_call(model, inp, p, eager_at=5, check_syncs=graphs)[:2]

    eager, eager_history = run(False)
    graphed, history = run(True)
    assert torch.equal(graphed, eager) and repr(history) == repr(eager_history)
    assert any(not h["computed"] for h in history[6:])     # forecasts after the hand-back


@pytest.mark.gpu
def test_graphed_calls_never_synchronise_and_an_eager_call_between_them_fits():
    model = tiny_flux(device="cuda")
    inp = make_inputs(1, device="cuda")
    eager, eager_history, _, _ = generate_with_an_eager_call(model, inp, policy(False),
                                                             eager_at=4, check_syncs=False)
    graphed, graphed_history, stats, _ = generate_with_an_eager_call(model, inp, policy(True),
                                                                     eager_at=4,
                                                                     check_syncs=True)
    assert torch.equal(graphed, eager)
    assert repr(graphed_history) == repr(eager_history)
    assert 0 < stats["skipped"] < STEPS


@pytest.mark.gpu
def test_per_sample_decisions_graph_each_pattern_with_no_synchronisation():
    """decision="per_sample": the graph branches on the pattern of samples that compute (each
    computing only its samples, as eagerly); an eager call in between hands each sample's
    accumulator to the host and back."""
    model = tiny_flux(device="cuda")
    inp = make_inputs(4, batch=3, device="cuda")
    inp["x"] = inp["x"] * torch.tensor([1.0, 3.0, 0.3], device="cuda")[:, None, None]

    def run(graphs):
        p = TeaCache(threshold=0.3, coefficients=None, num_inference_steps=STEPS,
                     decision="per_sample", cuda_graphs=graphs)
        return generate_with_an_eager_call(model, inp, p, eager_at=5, check_syncs=graphs)

    eager, eager_history, eager_stats, _ = run(False)
    graphed, history, stats, captured = run(True)
    assert captured == 1
    assert repr(history) == repr(eager_history)
    counts = ("calls", "computed", "skipped", "samples_computed", "samples_skipped")
    assert [stats[k] for k in counts] == [eager_stats[k] for k in counts]
    mixed = [h["computed"] for h in history if 0 < sum(h["computed"]) < 3]
    assert mixed, history                      # the test exercises a mixed pattern
    assert torch.equal(graphed, eager)


@pytest.mark.gpu
def test_per_sample_graphs_refuse_a_batch_with_too_many_patterns_before_it_runs():
    from cachekern.teacache.policy import PER_SAMPLE_GRAPH_BATCH

    model = tiny_flux(device="cuda")
    inp = make_inputs(4, batch=PER_SAMPLE_GRAPH_BATCH + 1, device="cuda")
    with cachekern.patched(model, TeaCache(decision="per_sample", cuda_graphs=True,
                                           coefficients=None)) as handle:
        with pytest.raises(ValueError, match="per_sample.*at most 4 samples.*has 5"), \
                torch.no_grad():
            call(model, inp, inp["x"], torch.tensor(1.0, device="cuda"))
        assert handle.stats()["calls"] == 0


@pytest.mark.gpu
def test_repatching_captures_again_without_error():
    model = tiny_flux(device="cuda")
    inp = make_inputs(2, device="cuda")
    first, reserved = None, []
    for _ in range(4):       # the handles dropped here are collected whenever Python likes
        handle = cachekern.patch(model, policy(True))
        out = sample(model, inp)
        assert handle.stats()["skipped"] > 0 and len(handle._graphs) == 1
        cachekern.unpatch(model)
        first = out if first is None else first
        assert torch.equal(out, first)
        del out
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        reserved.append(torch.cuda.memory_reserved())
    assert reserved[1:] == reserved[1:2] * 3      # unpatch gives the graphs' memory back


@pytest.mark.gpu
def test_graphs_follow_a_new_resolution_and_return_dict():
    model = tiny_flux(device="cuda")
    with cachekern.patched(model, policy(True, 1e9)) as handle:
        for tokens in (16, 25):
            inp = make_inputs(2, tokens=tokens, device="cuda")
            inp["img_ids"] = torch.zeros(tokens, 3, device="cuda")
            out = sample(model, inp)
            assert out.shape[2] == tokens and torch.isfinite(out).all()
        assert handle.stats()["skipped"] >= 2 * (STEPS - 3)
        latents = inp["x"]
        t = torch.full((2,), 0.01, device="cuda")
        result = model(hidden_states=latents, encoder_hidden_states=inp["enc"],
                       pooled_projections=inp["pooled"], timestep=t, img_ids=inp["img_ids"],
                       txt_ids=inp["txt_ids"])
        assert isinstance(result, diffusers.models.modeling_outputs.Transformer2DModelOutput)


def test_on_the_cpu_graphs_change_nothing():
    model = tiny_flux()
    inp = make_inputs(3)
    with cachekern.patched(model, policy(False)) as handle:
        eager, eager_history = sample(model, inp), list(handle.history)
    with cachekern.patched(model, policy(True)) as handle:
        assert torch.equal(sample(model, inp), eager)
        assert repr(handle.history) == repr(eager_history)


def test_what_graphs_cannot_serve_is_refused_clearly():
    for combination in (dict(parity=True), dict(reuse_modulated=True),
                        dict(decision="per_sample", forecast_order=1),
                        dict(decision="per_sample", compute_steps=[True, False],
                             forecast_weights=[None, [1.0]])):
        with pytest.raises(ValueError, match="cuda_graphs=True"):
            TeaCache(cuda_graphs=True, **combination)
    TeaCache(cuda_graphs=True, decision="per_sample")      # plain reuse is graphed
    with pytest.raises(ValueError, match="cuda_graphs must be True or False"):
        TeaCache(cuda_graphs="yes")
    model = hidream()[0]
    with pytest.raises(ValueError, match="block stack can be captured.*cpu"):
        cachekern.patch(model, TeaCache(cuda_graphs=True))
    assert not cachekern.patching.is_patched(model)


def test_a_family_whose_forward_reads_the_host_graphs_its_stack_and_on_the_cpu_runs_eagerly():
    """Lumina 2's forward reads caption lengths on the host: cuda_graphs=True patches it (its
    stack is what gets graphed on a GPU); on the CPU it changes nothing."""
    model, inputs, scale = lumina2()
    inp = inputs(3)
    runs = []
    for graphs in (False, True):
        with cachekern.patched(model, TeaCache(threshold=0.3, coefficients=None,
                                               num_inference_steps=6,
                                               cuda_graphs=graphs)) as handle:
            runs.append((sample_family(model, inp, timestep_scale=scale),
                         repr(handle.history)))
            assert handle._stack_graphs == graphs
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def test_driver_structures_have_cudas_layout():
    import ctypes

    from cachekern.teacache.conditional_nodes import _ConditionalParams, _NodeParams

    # sizeof / offsetof of CUgraphNodeParams and CUDA_CONDITIONAL_NODE_PARAMS in cuda.h (13.0)
    assert ctypes.sizeof(_NodeParams) == 256 and _NodeParams.conditional.offset == 16
    assert ctypes.sizeof(_ConditionalParams) == 32
    assert (_ConditionalParams.type.offset, _ConditionalParams.graph_out.offset,
            _ConditionalParams.ctx.offset) == (8, 16, 24)


@pytest.mark.gpu
def test_run_if_runs_its_body_only_when_the_flag_is_set_and_frees_its_memory():
    from cachekern.teacache.conditional_nodes import run_if

    x = torch.randn(37, 129, device="cuda")
    flag = torch.zeros((), dtype=torch.bool, device="cuda")
    not_flag = torch.zeros((), dtype=torch.bool, device="cuda")

    def capture_replay_release():
        graph, pool = torch.cuda.CUDAGraph(), torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=pool):
            out = torch.full_like(x, 7.0)
            computed = run_if(flag, lambda: (x @ x.T).sum(1) + x[:, 0], pool)   # allocates
            run_if(not_flag, lambda target=computed: target.copy_(x[:, 1]), pool)
            out = out + computed[:, None]
        for value in (True, False, True):
            flag.fill_(value)
            not_flag.fill_(not value)
            graph.replay()
            expected = (x @ x.T).sum(1) + x[:, 0] if value else x[:, 1]
            torch.testing.assert_close(out, torch.full_like(x, 7.0) + expected[:, None])
        del out, computed
        graph.reset()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return torch.cuda.memory_reserved()

    # The first round may leave libraries' per-stream state (cuBLAS workspaces); later rounds
    # must give back all they took: graphs captured again and again do not accumulate memory.
    first = capture_replay_release()
    assert capture_replay_release() == first and capture_replay_release() == first
    with pytest.raises(ValueError, match="flag must be a bool CUDA scalar"):
        run_if(torch.zeros(2, device="cuda"), lambda: None, None)
