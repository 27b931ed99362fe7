"""The custom ops: torch.library.opcheck (schema, fake tensors, AOT dispatch) and tracing by
torch.compile without graph breaks."""

import pytest
import torch
from numerics import DEVICES, device_param

import cachekern.kernels as ck

DEVS = [device_param(d) for d in DEVICES]


def sample_inputs(device, dtype=torch.float32):
    x = torch.randn(2, 33, 40, device=device, dtype=dtype)
    return x, torch.randn_like(x), torch.randn(2, 40, device=device, dtype=dtype), \
        torch.randn(40, device=device, dtype=dtype)


@pytest.mark.parametrize("device", DEVS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_every_op(device, dtype):
    x, prev, scale, shift = sample_inputs(device, dtype)
    ops = torch.ops.cachekern
    cases = [
        (ops.modulated_distance.default, (x, prev, scale, shift, "layer", 1e-6, torch.empty_like(x), False)),
        (ops.modulated_distance.default, (x, prev, scale, None, "rms", 1e-6, None, True)),
        (ops.modulate_.default, (x, scale, shift, "layer", 1e-6, torch.empty_like(x))),
        (ops.residual_reuse_.default, (x, prev, scale, shift, 2, torch.empty_like(x))),
        (ops.residual_reuse_.default, (x, prev, None, None, 2, torch.empty_like(x))),
        (ops.residual_capture_.default, (x, prev, torch.randn_like(x), True, torch.empty_like(x))),
        (ops.residual_capture_.default, (x, prev, None, False, torch.empty_like(x))),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVS)
def test_compiled_caching_step_has_no_graph_break(device):
    """A TeaCache-like step: decision sums, residual capture and reuse, traced as one graph."""
    x, prev, scale, shift = sample_inputs(device)

    def step(x, prev, scale, shift):
        m = torch.empty_like(x)
        diff, prev_sum = ck.modulated_distance(x, prev, scale, shift, out_modulated=m)
        hidden = torch.tanh(x) * 2.0
        residual, _, _ = ck.residual_capture(hidden, x)
        reused = ck.residual_reuse(x, residual, scale, shift)
        return diff / prev_sum, m, reused

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = compiled(x, prev, scale, shift)
    expected = step(x, prev, scale, shift)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_graph_replay_and_side_streams_match_eager():
    """Kernels (and the reduction's second stage) captured in a graph, or run on another stream,
    give the same bits as eager calls on the default stream."""
    x, prev, scale, shift = sample_inputs("cuda", torch.bfloat16)
    expected = ck.modulated_distance(x, prev, scale, shift)
    expected_capture = ck.residual_capture(x, prev, prev)[1:]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        on_side = ck.modulated_distance(x, prev, scale, shift)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        in_graph = ck.modulated_distance(x, prev, scale, shift)
        in_graph_capture = ck.residual_capture(x, prev, prev)[1:]
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        for got, want in zip(in_graph + in_graph_capture, expected + expected_capture):
            assert torch.equal(got, want)
    for got, want in zip(on_side, expected):
        assert torch.equal(got, want)
