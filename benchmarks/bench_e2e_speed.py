"""End-to-end step costs at FLUX.1-dev dimensions (19 double + 38 single blocks, hidden 3072,
1024² = 4096 image tokens, 512 text tokens, bf16, random weights) or Wan2.1-T2V-14B dimensions at
480p (81 frames), TeaCache beside diffusers' FirstBlockCache and cache-dit's DBCache F1B0 on the
same model in the same run.

    cd benchmarks && python bench_e2e_speed.py --out results_e2e.md
    python bench_e2e_speed.py --model wan-480p --reps 3 --overhead-reps 6 --out e2e_wan.md

Per method: a full step (every block runs), a skipped step (the cache serves the call), the
patched-but-never-skipping overhead against the unpatched model (interleaved, many repetitions),
and host synchronisations per call (counted with torch.cuda.set_sync_debug_mode).
"""

import argparse
import statistics

import torch

import cachekern
from benchmarks.harness import (PRESETS, build_model, build_wan, forward_fn, gpu_ms, make_inputs,
                                syncs_per_call, wan_inputs)


def with_context(model, run):
    with model.cache_context("cond"):
        return run()


def teacache_switch(cuda_graphs=False):
    def on(threshold):
        return lambda m: cachekern.patch(m, cachekern.TeaCache(threshold=threshold,
                                                               cuda_graphs=cuda_graphs))
    return dict(never=on(0.0), always=on(1e9), off=cachekern.unpatch)


def first_block_cache_switch():
    from diffusers.hooks import FirstBlockCacheConfig

    return dict(never=lambda m: m.enable_cache(FirstBlockCacheConfig(threshold=0.0)),
                always=lambda m: m.enable_cache(FirstBlockCacheConfig(threshold=1e9)),
                off=lambda m: m.disable_cache())


def cache_dit_switch():
    """cache-dit's DBCache F1B0 (its First-Block-Cache form), transformer-only, one branch; its
    warm-up and step-count features set out of the way of a stream of calls."""
    import cache_dit

    def enable(threshold):
        def on(model):
            cache_dit.enable_cache(model, cache_config=cache_dit.DBCacheConfig(
                Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold,
                max_warmup_steps=1, num_inference_steps=1 << 30, enable_separate_cfg=False))
        return on
    return dict(never=enable(0.0), always=enable(1e9), off=cache_dit.disable_cache)


SWITCHES = {"cachekern TeaCache": teacache_switch,
            "cachekern TeaCache, cuda_graphs": lambda: teacache_switch(cuda_graphs=True),
            "diffusers FirstBlockCache": first_block_cache_switch,
            "cache-dit DBCache F1B0": cache_dit_switch}


def bench_model(name, preset):
    """(model, call(sigma) -> output): FLUX.1-dev or Wan2.1-14B 480p dimensions."""
    if name == "flux":
        model = build_model(PRESETS[preset], torch.device("cuda"))
        inputs = make_inputs(PRESETS[preset], model, 0, torch.device("cuda"))
        return model, lambda sigma: forward_fn(model, inputs, sigma)()
    config, size = ("14b", "480p") if preset == "full" else ("small", "small")
    model = build_wan(config, torch.device("cuda"))
    latents, text = wan_inputs(model, size, torch.device("cuda"))

    def call(sigma):
        t = torch.full((1,), 1000.0 * sigma, device="cuda")
        return model(hidden_states=latents, timestep=t, encoder_hidden_states=text,
                     return_dict=False)[0]
    return model, call


@torch.no_grad()  # as a pipeline runs it; stored caches must not hold autograd graphs
def measure(model_name, reps, overhead_reps, preset, methods):
    model, call = bench_model(model_name, preset)
    # A decreasing schedule whose steps stay distinct in bf16 (the model casts the timestep to
    # its dtype): identical calls would let a data-driven cache skip where it never could.
    sigmas = iter(torch.linspace(1.0, 0.02, 100_000).tolist())
    plain = lambda: with_context(model, lambda: call(next(sigmas)))  # noqa: E731
    for _ in range(3):
        plain()
    rows, errors = {}, {}
    model_syncs = syncs_per_call(plain)
    full, spread = gpu_ms(plain, reps)
    for method in methods:
        try:
            rows[method] = measure_method(model, plain, SWITCHES[method](), reps, overhead_reps,
                                          method)
        except Exception as error:     # a peer that cannot run this model: say so, go on
            errors[method] = f"{type(error).__name__}: {error}"
    return full, spread, rows, errors, model_syncs


def measure_method(model, plain, switch, reps, overhead_reps, method):
    """(unpatched ms, patched-never-skipping ms: paired lists; skipped ms; syncs per call;
    host ms deciding per call or None)."""
    switch["never"](model)
    for _ in range(3):
        plain()
    syncs = syncs_per_call(plain)
    switch["off"](model)
    base_t, cached_t = [], []
    for i in range(overhead_reps):   # interleaved pairs, alternating which goes first
        for on in ((False, True) if i % 2 == 0 else (True, False)):
            if on:
                switch["never"](model)
                plain()                   # a first call computes without a decision,
                plain()                   # a second captures cuda_graphs' graphs
            (cached_t if on else base_t).append(gpu_ms(plain, 1)[0])
            if on:
                switch["off"](model)
    switch["always"](model)
    for _ in range(3):                # past any warm-up the method has
        plain()
    handle = model.__dict__.get("_cachekern_patch", (None,))[0]
    before = handle.stats() if handle is not None else None
    skipped, _ = gpu_ms(plain, reps)
    decision_ms = None
    if handle is not None:
        # Over the timed calls only: each starts on an idle GPU (gpu_ms synchronises after
        # every call), so this is the host's deciding time plus the wait, at its one sync, for
        # the call's own work before the decision (embedders, indicator, decision kernel).
        stats = handle.stats()
        decision_ms = (stats["decision_seconds"] - before["decision_seconds"]) / \
            (stats["calls"] - before["calls"]) * 1e3
        assert stats["skipped"] - before["skipped"] == reps
    switch["off"](model)
    return base_t, cached_t, skipped, syncs, decision_ms


def main(out_path=None, reps=10, overhead_reps=30, preset="full", model_name="flux",
         methods=tuple(SWITCHES)):
    from benchmarks.harness import environment, markdown_table, report, warm_up_gpu

    warm_up_gpu()
    full, spread, rows, errors, model_syncs = measure(model_name, reps, overhead_reps, preset,
                                                      methods)
    table = []
    for name, (base_t, patched_t, skipped, syncs, decision_ms) in rows.items():
        base = statistics.median(base_t)
        diffs = sorted(p - b for p, b in zip(patched_t, base_t))  # paired: drift cancels
        q1, q3 = diffs[len(diffs) // 4], diffs[3 * len(diffs) // 4]
        table.append([name, f"{base:.2f}", f"{statistics.median(patched_t):.2f}",
                      f"{statistics.median(diffs) / base:+.3%}",
                      f"{q1 / base:+.3%} … {q3 / base:+.3%}",
                      f"{skipped:.3f}", f"{skipped / full:.2%}", syncs,
                      "—" if decision_ms is None else f"{decision_ms:.3f}"])
    what = {"flux": "FLUX.1-dev dimensions, 1024², bf16, random weights",
            "wan-480p": "Wan2.1-T2V-14B dimensions, 480p × 81 frames, bf16, random weights"}
    text = "\n".join([
        environment(),
        f"{model_name}, preset {preset} (full: {what[model_name]}). Full step (unpatched; the "
        f"model itself makes {model_syncs} host syncs per call): median {full:.2f} ms over "
        f"{reps} calls (min {min(spread):.2f}, max {max(spread):.2f}). Overhead: "
        f"{overhead_reps} interleaved pairs.",
        "",
        markdown_table(["method", "unpatched ms", "patched, never skipping ms",
                        "overhead (median of paired differences)", "IQR of the overhead",
                        "skipped step ms", "skipped / full", "host syncs per call",
                        "host ms deciding per skipped call, incl. its sync"], table),
    ] + [f"\n{name}: could not run: {error}" for name, error in errors.items()])
    report(text, out_path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out")
    parser.add_argument("--model", default="flux", choices=["flux", "wan-480p"])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--overhead-reps", type=int, default=30)
    parser.add_argument("--preset", default="full", choices=sorted(PRESETS),
                        help="small: a quick check of the script itself")
    parser.add_argument("--methods", nargs="+", default=list(SWITCHES), choices=list(SWITCHES))
    args = parser.parse_args()
    main(args.out, args.reps, args.overhead_reps, args.preset, args.model, args.methods)
