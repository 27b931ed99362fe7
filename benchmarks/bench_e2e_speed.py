"""End-to-end step costs at FLUX.1-dev dimensions (19 double + 38 single blocks, hidden 3072,
1024² = 4096 image tokens, 512 text tokens, bf16, random weights), TeaCache beside diffusers'
FirstBlockCache on the same model in the same run.

    python benchmarks/bench_e2e_speed.py --out results_e2e.md

Per method: a full step (every block runs), a skipped step (the cache serves the call), the
patched-but-never-skipping overhead against the unpatched model (interleaved, many repetitions),
and host synchronisations per call (counted with torch.cuda.set_sync_debug_mode).
"""

import argparse
import statistics
import warnings

import torch

import cachekern
from cachekern.demo import PRESETS, build_model, make_inputs


def forward_fn(model, inputs, sigma):
    t = torch.full((1,), sigma, device="cuda", dtype=inputs["latents"].dtype)

    def run():
        return model(hidden_states=inputs["latents"], timestep=t,
                     encoder_hidden_states=inputs["encoder_hidden_states"],
                     pooled_projections=inputs["pooled_projections"], img_ids=inputs["img_ids"],
                     txt_ids=inputs["txt_ids"], guidance=inputs["guidance"], return_dict=False)[0]
    return run


def gpu_ms(fn, reps):
    """Median of `reps` calls, each timed with CUDA events around the call (host sync after)."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), times


def syncs_per_call(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def with_context(model, run):
    with model.cache_context("cond"):
        return run()


@torch.no_grad()  # as a pipeline runs it; stored caches must not hold autograd graphs
def measure(reps, overhead_reps, preset):
    from diffusers.hooks import FirstBlockCacheConfig

    model = build_model(PRESETS[preset], torch.device("cuda"))
    inputs = make_inputs(PRESETS[preset], model, 0, torch.device("cuda"))
    # A decreasing schedule whose steps stay distinct in bf16 (the model casts the timestep to
    # its dtype): identical calls would let a data-driven cache skip where it never could.
    schedule = torch.linspace(1.0, 0.02, 600).tolist()
    sigmas = iter(schedule)
    plain = lambda: with_context(model, forward_fn(model, inputs, next(sigmas)))  # noqa: E731
    for _ in range(3):
        plain()
    rows = {}
    model_syncs = syncs_per_call(plain)

    # TeaCache: never skipping (threshold 0), then always skipping after the first call.
    cachekern.patch(model, cachekern.TeaCache(threshold=0.0))
    for _ in range(3):
        plain()
    teacache_syncs = syncs_per_call(plain)
    base_t, cached_t = [], []
    for i in range(overhead_reps):   # interleaved pairs, alternating which goes first
        for patched in ((False, True) if i % 2 == 0 else (True, False)):
            if "_cachekern_patch" in model.__dict__:
                cachekern.unpatch(model)
            if patched:
                cachekern.patch(model, cachekern.TeaCache(threshold=0.0))
                plain()                   # a first call per patch computes without a decision
            (cached_t if patched else base_t).append(gpu_ms(plain, 1)[0])
    if "_cachekern_patch" in model.__dict__:
        cachekern.unpatch(model)
    handle = cachekern.patch(model, cachekern.TeaCache(threshold=1e9))
    plain()
    skipped, _ = gpu_ms(plain, reps)
    decision_ms = handle.stats()["decision_seconds"] / handle.stats()["calls"] * 1e3
    assert handle.stats()["skipped"] >= reps
    cachekern.unpatch(model)
    rows["cachekern TeaCache"] = (base_t, cached_t, skipped, teacache_syncs, decision_ms)

    # diffusers FirstBlockCache: threshold 0 never skips, a huge one always skips.
    sigmas = iter(schedule)
    model.enable_cache(FirstBlockCacheConfig(threshold=0.0))
    for _ in range(3):
        plain()
    fbc_syncs = syncs_per_call(plain)
    base_f, fbc_t = [], []
    for i in range(overhead_reps):
        for enabled in ((False, True) if i % 2 == 0 else (True, False)):
            if model.is_cache_enabled:
                model.disable_cache()
            if enabled:
                model.enable_cache(FirstBlockCacheConfig(threshold=0.0))
                plain()
            (fbc_t if enabled else base_f).append(gpu_ms(plain, 1)[0])
    if model.is_cache_enabled:
        model.disable_cache()
    model.enable_cache(FirstBlockCacheConfig(threshold=1e9))
    plain()
    fbc_skipped, _ = gpu_ms(plain, reps)
    model.disable_cache()
    rows["diffusers FirstBlockCache"] = (base_f, fbc_t, fbc_skipped, fbc_syncs, None)
    full, spread = gpu_ms(plain, reps)
    return full, spread, rows, model_syncs


def main(out_path=None, reps=10, overhead_reps=30, preset="full"):
    from common import environment, markdown_table, report, warm_up_gpu

    warm_up_gpu()
    full, spread, rows, model_syncs = measure(reps, overhead_reps, preset)
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
    text = "\n".join([
        environment(),
        f"Preset {preset} (full: FLUX.1-dev dimensions, 1024², bf16, random weights). Full step "
        f"(unpatched; the model itself makes {model_syncs} host syncs per call): median "
        f"{full:.2f} ms over {reps} calls (min {min(spread):.2f}, max {max(spread):.2f}).",
        "",
        markdown_table(["method", "unpatched ms", "patched, never skipping ms",
                        "overhead (median of paired differences)", "IQR of the overhead",
                        "skipped step ms", "skipped / full", "host syncs per call",
                        "host ms deciding per call"], table),
    ])
    report(text, out_path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--overhead-reps", type=int, default=30)
    parser.add_argument("--preset", default="full", choices=sorted(PRESETS),
                        help="small: a quick check of the script itself")
    args = parser.parse_args()
    main(args.out, args.reps, args.overhead_reps, args.preset)
