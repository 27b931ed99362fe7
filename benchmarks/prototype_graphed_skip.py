"""An experiment for issue 4, not a feature: what would TeaCache's steps cost at FLUX.1-dev size if
the work around the decision ran as CUDA graphs instead of diffusers' eager forward?

    cd benchmarks && python prototype_graphed_skip.py --out graphed_skip.md

The skipped call needs only: x_embedder, the timestep/guidance/text embedding, block 0's AdaLN
projection, the fused decision kernel (before the one host read), then residual_reuse, norm_out
and proj_out (after it). Graph A holds the first part, graph B the second. Timed side by side in
the same run: the full step, the eager skipped step through cachekern.patch (what users get
today), and A → read the two sums → B. Also checks that B's output equals what the eager skip
path computes from the same residual, bit for bit. Then a computed step: A → read → the whole
forward as one graph, timed with events around the pieces (the overhead is what runs before the
forward can start).
"""

import argparse
import statistics

import torch

import cachekern
from bench_e2e_speed import forward_fn, gpu_ms
from cachekern import triton_kernels as kernels
from cachekern.demo import PRESETS, build_model, make_inputs


@torch.no_grad()
def main(reps, out_path):
    from common import environment, report, warm_up_gpu

    warm_up_gpu()
    device = torch.device("cuda")
    model = build_model(PRESETS["full"], device)
    inputs = make_inputs(PRESETS["full"], model, 0, device)
    dtype = inputs["latents"].dtype
    full, _ = gpu_ms(lambda: forward_fn(model, inputs, 0.5)(), reps)

    # Today's eager skipped call.
    sigmas = iter(torch.linspace(1.0, 0.02, 10_000).tolist())
    cachekern.patch(model, cachekern.TeaCache(threshold=1e9))
    for _ in range(3):
        forward_fn(model, inputs, next(sigmas))()
    eager_skip, _ = gpu_ms(lambda: forward_fn(model, inputs, next(sigmas))(), reps)
    cachekern.unpatch(model)

    # Static buffers and the two graphs.
    block0 = model.transformer_blocks[0]
    timestep = torch.full((1,), 0.5, device=device, dtype=dtype)
    static = dict(latents=inputs["latents"].clone(), timestep=timestep)
    tokens = inputs["latents"].shape[1]
    prev = torch.randn(1, tokens, model.inner_dim, device=device, dtype=dtype)
    residual = torch.randn(1, tokens, model.inner_dim, device=device, dtype=dtype) * 0.1

    def part_a():
        hidden = model.x_embedder(static["latents"])
        t = static["timestep"].to(dtype) * 1000
        g = inputs["guidance"].to(dtype) * 1000
        temb = model.time_text_embed(t, g, inputs["pooled_projections"])
        emb = block0.norm1.linear(block0.norm1.silu(temb))
        shift, scale = emb.chunk(6, dim=1)[:2]
        diff, prev_sum = kernels.modulated_distance(hidden, prev, scale, shift,
                                                    out_modulated=prev)
        return hidden, temb, torch.stack([diff, prev_sum])

    def part_b(hidden, temb):
        h = kernels.residual_reuse(hidden, residual)
        return model.proj_out(model.norm_out(h, temb))

    side = torch.cuda.Stream()                       # warm-up before capture, as torch advises
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            hidden, temb, sums = part_a()
            part_b(hidden, temb)
    torch.cuda.current_stream().wait_stream(side)
    graph_a, graph_b = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph_a):
        hidden, temb, sums = part_a()
    with torch.cuda.graph(graph_b):
        out = part_b(hidden, temb)
    host_sums = torch.empty(2, 1, pin_memory=True)

    def graphed_skip():
        graph_a.replay()
        host_sums.copy_(sums)          # the decision's one host read
        _ = host_sums.tolist()
        graph_b.replay()
        return out

    for _ in range(3):
        graphed_skip()
    graphed, spread = gpu_ms(graphed_skip, reps)
    expected = part_b(hidden, temb)
    same = torch.equal(out, expected)

    # A computed step the same way: graph A, the host read, then the whole unpatched forward as
    # one graph F. Its overhead is what runs before F can start: A and the idle gap of the read.
    static_forward = lambda: forward_fn(model, dict(inputs, latents=static["latents"]), 0.5)()  # noqa: E731
    with torch.cuda.stream(side):
        for _ in range(2):
            static_forward()
    torch.cuda.current_stream().wait_stream(side)
    graph_f = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph_f):
        forward_out = static_forward()
    overheads, forwards = [], []
    for _ in range(reps):
        events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        events[0].record()
        graph_a.replay()
        host_sums.copy_(sums)
        _ = host_sums.tolist()
        events[1].record()
        graph_f.replay()
        events[2].record()
        events[2].synchronize()
        overheads.append(events[0].elapsed_time(events[1]))
        forwards.append(events[1].elapsed_time(events[2]))
    graphed_forward_same = torch.equal(forward_out, static_forward())
    overhead, forward = statistics.median(overheads), statistics.median(forwards)
    text = "\n".join([
        environment(),
        f"FLUX.1-dev dimensions, bf16, random weights; medians of {reps} calls (CUDA events).",
        "",
        "| call | ms | of a full step |",
        "|---|---|---|",
        f"| full step, unpatched | {full:.2f} | 100 % |",
        f"| skipped step, cachekern.patch (eager, today) | {eager_skip:.3f} | "
        f"{eager_skip / full:.2%} |",
        f"| skipped step as graph A → host read → graph B (prototype) | {graphed:.3f} | "
        f"{graphed / full:.2%} |",
        "",
        f"Graph B's output equals the same computation run eagerly: {same}. "
        f"Spread of the prototype: {min(spread):.3f}–{max(spread):.3f} ms "
        f"(median {statistics.median(spread):.3f}).",
        "",
        f"A computed step as graph A → host read → the whole forward as one graph: the work "
        f"before the forward can start (graph A and the read's idle gap) {overhead * 1e3:.1f} µs "
        f"= {overhead / full:.3%} of a full step (median of {reps}); the graphed forward itself "
        f"{forward:.2f} ms; its output equals the eager forward's bit for bit: "
        f"{graphed_forward_same}.",
    ])
    report(text, out_path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--out")
    args = parser.parse_args()
    main(args.reps, args.out)
