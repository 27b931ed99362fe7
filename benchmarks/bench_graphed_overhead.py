"""TeaCache(cuda_graphs=True) at FLUX.1-dev dimensions against the same model captured as a CUDA
graph without caching: the overhead of deciding on a step that computes, the cost of a step that
skips, and host synchronisations per call.

    python -m benchmarks.bench_graphed_overhead --out graphed_overhead.md

A patched model replays one graph per call (cachekern.teacache.graphs); the fair baseline for its
computed step is therefore not the eager forward (which a graph beats by removing launch
overhead) but the unpatched forward captured as one graph and replayed the same way: inputs
copied into static tensors, one replay, the output cloned. Both graphs live side by side on the
same model and are replayed interleaved, alternating which goes first, with the host running
ahead as in a pipeline; each call is timed with CUDA events. Medians of paired differences, and
their interquartile range. A 170-ms call's time varies by about a millisecond from call to call,
more than the 0.1 % to be resolved, so the addition is also measured on the same dimensions with
one double and one single block (it does not depend on the stack's depth) and expressed against
the full graphed step.
"""

import argparse
import statistics

import torch

import cachekern
from benchmarks.harness import PRESETS, build_model, make_inputs
from benchmarks.harness import UserGraph, syncs_per_call


def timed(fn):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    return start, end


def spread(values, base):
    values = sorted(values)
    q1, q3 = values[len(values) // 4], values[3 * len(values) // 4]
    return statistics.median(values) / base, q1 / base, q3 / base


def calls(model, inputs, device):
    """kwargs for successive calls: the same latents and text, a decreasing timestep (distinct
    in bf16, as the model casts it)."""
    sigmas = iter(torch.linspace(1.0, 0.02, 100_000).tolist())

    def kwargs():
        t = torch.full((1,), next(sigmas), device=device, dtype=inputs["latents"].dtype)
        return dict(hidden_states=inputs["latents"], timestep=t,
                    encoder_hidden_states=inputs["encoder_hidden_states"],
                    pooled_projections=inputs["pooled_projections"], img_ids=inputs["img_ids"],
                    txt_ids=inputs["txt_ids"], guidance=inputs["guidance"], return_dict=False)
    return kwargs


def ms(events):
    return [s.elapsed_time(e) for s, e in events]


def never_skipping_pairs(model, kwargs, pairs, forecast_order=0):
    """(baseline graph events, patched events, host syncs of each) over interleaved pairs."""
    user_graph = UserGraph(model, kwargs())
    handle = cachekern.patch(model, cachekern.TeaCache(threshold=0.0, cuda_graphs=True,
                                                       forecast_order=forecast_order))
    patched = lambda: model(**kwargs())[0]  # noqa: E731
    for _ in range(3):          # the first call runs eagerly, the second captures
        patched()
    syncs = syncs_per_call(patched), syncs_per_call(lambda: user_graph(**kwargs()))
    base_t, cached_t = [], []
    for i in range(pairs):      # host ahead of the GPU throughout, as in a pipeline
        for cached in ((False, True) if i % 2 == 0 else (True, False)):
            events = timed(patched if cached else lambda: user_graph(**kwargs()))
            (cached_t if cached else base_t).append(events)
    torch.cuda.synchronize()
    assert handle.stats()["skipped"] == 0, handle.stats()
    cachekern.unpatch(model)
    return base_t, cached_t, syncs


@torch.no_grad()
def main(pairs, short_pairs, reps, out_path, preset, forecast_order=0):
    from benchmarks.harness import environment, markdown_table, report, warm_up_gpu

    warm_up_gpu()
    device = torch.device("cuda")
    config = PRESETS[preset]
    model = build_model(config, device)
    inputs = make_inputs(config, model, 0, device)
    kwargs = calls(model, inputs, device)

    eager = lambda: model(**kwargs())[0]  # noqa: E731
    for _ in range(2):
        eager()
    full_eager = [timed(eager) for _ in range(reps)]
    base_t, cached_t, (syncs, baseline_syncs) = never_skipping_pairs(model, kwargs, pairs,
                                                                     forecast_order)

    # Always skipping after the warm-up steps: reusing the residual (order 0), or forecasting
    # it from the last 1 + order computed ones (a static schedule that computes them first).
    computed = forecast_order + 1
    policy = cachekern.TeaCache(threshold=1e9, cuda_graphs=True) if not forecast_order else \
        cachekern.TeaCache(cuda_graphs=True, forecast_order=forecast_order,
                           compute_steps=[True] * computed + [False] * (3 * reps + 8))
    handle = cachekern.patch(model, policy)
    patched = lambda: model(**kwargs())[0]  # noqa: E731
    for _ in range(computed + 2):
        patched()
    skipped_ahead = [timed(patched) for _ in range(reps)]
    torch.cuda.synchronize()
    skipped_alone = []
    for _ in range(reps):           # each call on an idle GPU: host latency included
        torch.cuda.synchronize()
        skipped_alone.append(timed(patched))
        torch.cuda.synchronize()
    stats = handle.stats()
    cachekern.unpatch(model)
    del model
    torch.cuda.empty_cache()

    # The same dimensions with one double and one single block: what TeaCache adds to a call
    # does not depend on the depth of the stack, and a short call's time varies by
    # microseconds, not by the ~1 ms a 170-ms call does, so many pairs resolve it.
    short = dict(config, config=dict(config["config"], num_layers=1, num_single_layers=1))
    model = build_model(short, device)
    short_kwargs = calls(model, make_inputs(short, model, 0, device), device)
    short_base, short_cached, _ = never_skipping_pairs(model, short_kwargs, short_pairs,
                                                       forecast_order)

    full, graph_full = statistics.median(ms(full_eager)), statistics.median(ms(base_t))
    median, q1, q3 = spread([c - b for c, b in zip(ms(cached_t), ms(base_t))], graph_full)
    us = [1e3 * (c - b) for c, b in zip(ms(short_cached), ms(short_base))]
    short_median, short_q1, short_q3 = spread(us, 1.0)
    skip_ahead, skip_alone = statistics.median(ms(skipped_ahead)), \
        statistics.median(ms(skipped_alone))
    rows = [
        ["full step, unpatched, eager", f"{full:.3f}", "", "—"],
        ["full step, unpatched, as one CUDA graph (baseline)", f"{graph_full:.3f}", "",
         baseline_syncs],
        ["TeaCache(cuda_graphs=True), never skipping", f"{statistics.median(ms(cached_t)):.3f}",
         f"paired difference {median:+.3%} (IQR {q1:+.3%} … {q3:+.3%}) of the graphed step",
         syncs],
        ["the same with 1 + 1 blocks: TeaCache's addition to a call",
         f"{short_median / 1e3:+.4f}",
         f"{short_median:+.1f} µs (IQR {short_q1:+.1f} … {short_q3:+.1f} µs) = "
         f"{short_median / 1e3 / graph_full:+.4%} of the graphed full step", "—"],
        ["TeaCache(cuda_graphs=True), skipped, host ahead", f"{skip_ahead:.3f}",
         f"{skip_ahead / full:.3%} of the eager step, {skip_ahead / graph_full:.3%} of the "
         f"graphed", "—"],
        ["TeaCache(cuda_graphs=True), skipped, each call on an idle GPU", f"{skip_alone:.3f}",
         f"{skip_alone / full:.3%} of the eager step, {skip_alone / graph_full:.3%} of the "
         f"graphed", "—"],
    ]
    text = "\n".join([
        environment(),
        f"FLUX.1-dev dimensions (preset {preset}), bf16, random weights, forecast order "
        f"{forecast_order} (a skipped call {'reuses the residual' if not forecast_order else f'forecasts from {forecast_order + 1} computed residuals'}). Never skipping: "
        f"{pairs} interleaved pairs on the full model, {short_pairs} on the 1 + 1-block one; "
        f"{reps} calls otherwise; medians of CUDA-event times. Skipped calls counted by the "
        f"handle: {stats['skipped']} of {stats['calls']}.",
        "",
        markdown_table(["call", "ms", "relative", "host syncs per call"], rows),
    ])
    report(text, out_path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--short-pairs", type=int, default=400)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--preset", default="full", choices=sorted(PRESETS),
                        help="small: a quick check of the script itself")
    parser.add_argument("--forecast-order", type=int, default=0, choices=(0, 1, 2))
    args = parser.parse_args()
    main(args.pairs, args.short_pairs, args.reps, args.out, args.preset, args.forecast_order)
