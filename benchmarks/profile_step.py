"""Where a TeaCache step's time goes, at FLUX.1-dev dimensions (bf16, random weights).

    cd benchmarks && python profile_step.py [--preset full] [--out profile.md]

Complements bench_e2e_speed.py (which times whole calls against the peers) with a breakdown:

- the *shell*: the unpatched model with its block lists emptied, i.e. everything outside the
  block stack (embedders, rotary table, final norm and projection). Any cache that skips the
  stack still pays it; it bounds what a skipped step can cost;
- a skipped TeaCache call: wall time, host time, GPU kernel time, and the host functions that
  take the time (cProfile, cumulative);
- computed TeaCache calls against the unpatched model, four in a row from a torch.profiler
  trace: the GPU time of the kernels TeaCache adds and the GPU idle time (the wait at the one
  host synchronisation per call), per call. Their sum is the patched-but-never-skipping
  overhead, measured directly rather than as the small difference of two noisy 175-ms timings
  (a slight overestimate: the first call of the four also exposes its pre-sync host work).
"""

import argparse
import cProfile
import io
import pstats
import statistics
import time

import torch
from torch import nn

import cachekern
from cachekern.demo import PRESETS, build_model, make_inputs

from bench_e2e_speed import forward_fn, gpu_ms


def kernel_intervals(prof):
    """(start_us, end_us, name) of every GPU kernel/memcpy in a torch.profiler run."""
    out = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.elapsed_us() > 0:
            out.append((e.time_range.start, e.time_range.end, e.name))
    return sorted(out)


def busy_and_idle(intervals):
    """GPU busy time (union of intervals) and idle time between the first start and last end."""
    busy, cur_start, cur_end = 0.0, None, None
    for start, end, _ in intervals:
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                busy += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        busy += cur_end - cur_start
    span = intervals[-1][1] - intervals[0][0] if intervals else 0.0
    return busy, span - busy


def host_syncs(prof):
    """Stream and event synchronisations the host made (a `.item()` or `.tolist()` of a GPU
    tensor is one cudaStreamSynchronize); the profiler's own closing device sync is not one."""
    return sum(e.name in ("cudaStreamSynchronize", "cudaEventSynchronize") for e in prof.events())


def profile_call(fn, calls=5):
    """Per call: GPU busy µs, GPU idle µs inside the call, kernel µs by name (medians), and the
    host synchronisations of the last call."""
    from torch.profiler import ProfilerActivity, profile

    busy, idle, by_name = [], [], {}
    for _ in range(calls):
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        profile_call.syncs = host_syncs(prof)
        intervals = kernel_intervals(prof)
        b, i = busy_and_idle(intervals)
        busy.append(b)
        idle.append(i)
        names = {}
        for start, end, name in intervals:
            names[name] = names.get(name, 0.0) + end - start
        for name, us in names.items():
            by_name.setdefault(name, []).append(us)
    return (statistics.median(busy), statistics.median(idle),
            {name: statistics.median(v) for name, v in by_name.items()})


CONSECUTIVE = 4


def per_call(profiled):
    busy, idle, kernels = profiled
    return (busy / CONSECUTIVE, idle / CONSECUTIVE,
            {name: us / CONSECUTIVE for name, us in kernels.items()})


def host_us(fn, reps):
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def cprofile_top(fn, calls=20, top=25):
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(top)
    return stream.getvalue()


@torch.no_grad()
def main(preset, reps, out_path):
    from common import environment, markdown_table, report, warm_up_gpu

    warm_up_gpu()
    model = build_model(PRESETS[preset], torch.device("cuda"))
    inputs = make_inputs(PRESETS[preset], model, 0, torch.device("cuda"))
    sigmas = iter(torch.linspace(1.0, 0.02, 5000).tolist())
    call = lambda: forward_fn(model, inputs, next(sigmas))()  # noqa: E731
    for _ in range(3):
        call()
    full, _ = gpu_ms(call, reps)
    _, full_idle, _ = profile_call(call, 3)

    lists = ("transformer_blocks", "single_transformer_blocks")
    saved = {name: model._modules[name] for name in lists}
    for name in lists:
        model._modules[name] = nn.ModuleList()
    for _ in range(3):
        call()
    shell_wall, _ = gpu_ms(call, 4 * reps)
    shell_host = host_us(call, 4 * reps)
    shell_busy, shell_idle, _ = profile_call(call)
    model._modules.update(saved)

    handle = cachekern.patch(model, cachekern.TeaCache(threshold=1e9))
    for _ in range(3):
        call()
    skip_wall, _ = gpu_ms(call, 4 * reps)
    skip_host = host_us(call, 4 * reps)
    skip_busy, skip_idle, skip_kernels = profile_call(call)
    skip_profile = cprofile_top(call)
    assert handle.stats()["computed"] <= 2, handle.stats()
    cachekern.unpatch(model)

    skip_syncs = profile_call.syncs
    # Computed calls are profiled four in a row, as a denoising loop makes them: the host runs
    # ahead of the GPU, and what a call's synchronisation costs shows as GPU idle time.
    run = lambda: [call() for _ in range(CONSECUTIVE)]  # noqa: E731
    cachekern.patch(model, cachekern.TeaCache(threshold=0.0))
    for _ in range(3):
        call()
    never_busy, never_idle, never_kernels = per_call(profile_call(run, 3))
    never_syncs = profile_call.syncs
    cachekern.unpatch(model)
    cachekern.patch(model, cachekern.TeaCache(threshold=0.0, reuse_modulated=True))
    for _ in range(3):
        call()
    reuse_busy, reuse_idle, _ = per_call(profile_call(run, 3))
    cachekern.unpatch(model)
    plain_busy, plain_idle, plain_kernels = per_call(profile_call(run, 3))
    plain_syncs = profile_call.syncs
    added = {name: us for name, us in never_kernels.items() if name not in plain_kernels}

    rows = [
        ["full step, unpatched", f"{full * 1e3:.0f}", "—", f"{plain_busy:.0f}", f"{plain_idle:.0f}"],
        ["shell (block lists emptied)", f"{shell_wall * 1e3:.0f}", f"{shell_host:.0f}",
         f"{shell_busy:.0f}", f"{shell_idle:.0f}"],
        ["TeaCache, skipped", f"{skip_wall * 1e3:.0f}", f"{skip_host:.0f}", f"{skip_busy:.0f}",
         f"{skip_idle:.0f}"],
        ["TeaCache, computed (threshold 0)", "—", "—", f"{never_busy:.0f}", f"{never_idle:.0f}"],
        ["TeaCache, computed, reuse_modulated", "—", "—", f"{reuse_busy:.0f}",
         f"{reuse_idle:.0f}"],
    ]
    overhead = (never_busy - plain_busy) + (never_idle - plain_idle)
    text = "\n".join([
        environment(),
        f"Preset {preset}. Medians; wall = CUDA events around the call, host = perf_counter "
        f"around the call (no sync), GPU busy/idle from torch.profiler.",
        "",
        markdown_table(["call", "wall µs", "host µs", "GPU busy µs", "GPU idle inside µs"], rows),
        "",
        f"Skipped / full: wall {skip_wall / full:.3%}, GPU busy {skip_busy / (full * 1e3):.3%}; "
        f"shell / full: wall {shell_wall / full:.3%}.",
        f"Never-skipping overhead, direct: added GPU busy {never_busy - plain_busy:+.0f} µs, added "
        f"GPU idle {never_idle - plain_idle:+.0f} µs, total {overhead:+.0f} µs = "
        f"{overhead / (full * 1e3):+.3%} of a full step. With reuse_modulated: added GPU busy "
        f"{reuse_busy - plain_busy:+.0f} µs, added idle {reuse_idle - plain_idle:+.0f} µs.",
        f"Host synchronisations per call (cudaStreamSynchronize/cudaEventSynchronize in the "
        f"trace): unpatched {plain_syncs}, TeaCache computed {never_syncs}, TeaCache skipped "
        f"{skip_syncs}.",
        "",
        "Kernels a computed TeaCache call adds (µs): " + ", ".join(
            f"{name[:60]} {us:.1f}" for name, us in sorted(added.items(), key=lambda kv: -kv[1])),
        "",
        "Kernels of a skipped call (µs): " + ", ".join(
            f"{name[:60]} {us:.1f}" for name, us in sorted(skip_kernels.items(),
                                                          key=lambda kv: -kv[1])[:25]),
        "",
        "Host profile of 20 skipped calls (cProfile, cumulative):",
        "```", skip_profile, "```",
    ])
    report(text, out_path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="full", choices=sorted(PRESETS))
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out")
    args = parser.parse_args()
    main(args.preset, args.reps, args.out)
