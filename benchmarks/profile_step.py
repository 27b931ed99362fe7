"""Where a TeaCache step's time goes, at FLUX.1-dev dimensions (bf16, random weights).

    python -m benchmarks.profile_step [--preset full] [--out profile.md]

Complements bench_e2e_speed.py (which times whole calls against the peers) with a breakdown:

- the *shell*: the unpatched model with its block lists emptied, i.e. everything outside the
  block stack (embedders, rotary table, final norm and projection). Any cache that skips the
  stack still pays it; it bounds what a skipped step can cost;
- a skipped TeaCache call: wall time, host time, GPU kernel time, and the host functions that
  take the time (cProfile, cumulative);
- the patched-but-never-skipping overhead, measured directly in a steady loop of computed calls
  with CUDA events around each piece TeaCache adds (the indicator's projection, the decision
  kernels, the GPU idle time at the one synchronisation, a slower start of block 0 while the
  host catches up, the residual capture), rather than as the small difference of two noisy
  175-ms timings (their run-to-run spread is ~1 %, ten times the 0.1 % bar).
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
from benchmarks.harness import PRESETS, build_model, make_inputs

from benchmarks.harness import forward_fn, gpu_ms


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
        syncs = host_syncs(prof)
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
            {name: statistics.median(v) for name, v in by_name.items()}, syncs)


COST_KEYS = ("indicator", "decision", "sync_idle", "ramp", "capture")
STEADY = 6


def _timed(owner, name, record):
    """Wraps owner.name so that CUDA events are recorded before and after each call."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = _event()
        out = original(*args, **kwargs)
        record.append((start, _event()))
        return out
    setattr(owner, name, wrapper)
    return lambda: setattr(owner, name, original)


def never_skipping_costs(model, call, policy):
    """Per call, in a steady loop (the host ahead of the GPU, as in a pipeline): GPU time of the
    indicator's projection, of the decision kernels and of the residual capture; the GPU idle
    time from the end of the decision to block 0's first kernel (the one synchronisation); and
    the GPU time from block 0 to block 2, which grows if the host, just back from the sync,
    cannot launch block 0's small kernels as fast as the GPU runs them. None: unpatched."""
    import cachekern.kernels as kernels

    records = {key: [] for key in COST_KEYS}
    marks = []
    hooks = [model.transformer_blocks[i].register_forward_pre_hook(
        lambda *_, i=i: marks.append((i, _event()))) for i in (0, 2)]
    restore = []
    if policy is not None:
        handle = cachekern.patch(model, policy)
        restore = [_timed(handle.adapter, "indicator", records["indicator"]),
                   _timed(kernels, "modulated_distance", records["decision"]),
                   _timed(kernels, "residual_capture", records["capture"])]
    try:
        for _ in range(3):
            call()
        for key in records:
            records[key].clear()
        marks.clear()
        torch.cuda.synchronize()
        for _ in range(STEADY):
            call()
        torch.cuda.synchronize()
    finally:
        for undo in restore:
            undo()
        for hook in hooks:
            hook.remove()
        if policy is not None:
            cachekern.unpatch(model)
    block0 = [e for i, e in marks if i == 0]
    block2 = [e for i, e in marks if i == 2]
    median = lambda pairs: statistics.median(a.elapsed_time(b) * 1e3 for a, b in pairs) \
        if pairs else 0.0  # noqa: E731
    costs = {key: median(records[key]) for key in ("indicator", "decision", "capture")}
    costs["sync_idle"] = median([(d[1], b) for d, b in zip(records["decision"], block0)])
    costs["ramp"] = median(list(zip(block0, block2)))
    return costs


def overhead_us(costs, plain):
    return (costs["indicator"] + costs["decision"] + costs["sync_idle"] + costs["capture"]
            + costs["ramp"] - plain["ramp"])


def _event():
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


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
    from benchmarks.harness import environment, markdown_table, report, warm_up_gpu

    warm_up_gpu()
    model = build_model(PRESETS[preset], torch.device("cuda"))
    inputs = make_inputs(PRESETS[preset], model, 0, torch.device("cuda"))
    sigmas = iter(torch.linspace(1.0, 0.02, 5000).tolist())
    call = lambda: forward_fn(model, inputs, next(sigmas))()  # noqa: E731
    for _ in range(3):
        call()
    full, _ = gpu_ms(call, reps)

    lists = ("transformer_blocks", "single_transformer_blocks")
    saved = {name: model._modules[name] for name in lists}
    for name in lists:
        model._modules[name] = nn.ModuleList()
    for _ in range(3):
        call()
    shell_wall, _ = gpu_ms(call, 4 * reps)
    shell_host = host_us(call, 4 * reps)
    shell_busy, shell_idle, _, _ = profile_call(call)
    model._modules.update(saved)

    handle = cachekern.patch(model, cachekern.TeaCache(threshold=1e9))
    for _ in range(3):
        call()
    skip_wall, _ = gpu_ms(call, 4 * reps)
    skip_host = host_us(call, 4 * reps)
    skip_busy, skip_idle, skip_kernels, skip_syncs = profile_call(call)
    skip_profile = cprofile_top(call)
    assert handle.stats()["computed"] <= 2, handle.stats()
    cachekern.unpatch(model)

    cachekern.patch(model, cachekern.TeaCache(threshold=0.0))
    for _ in range(3):
        call()
    never_syncs = profile_call(call, 1)[3]
    cachekern.unpatch(model)
    plain_busy, plain_idle, _, plain_syncs = profile_call(call, 1)
    plain = never_skipping_costs(model, call, None)
    never = never_skipping_costs(model, call, cachekern.TeaCache(threshold=0.0))
    reuse = never_skipping_costs(model, call, cachekern.TeaCache(threshold=0.0,
                                                                 reuse_modulated=True))

    rows = [
        ["full step, unpatched", f"{full * 1e3:.0f}", "—", f"{plain_busy:.0f}", f"{plain_idle:.0f}"],
        ["shell (block lists emptied)", f"{shell_wall * 1e3:.0f}", f"{shell_host:.0f}",
         f"{shell_busy:.0f}", f"{shell_idle:.0f}"],
        ["TeaCache, skipped", f"{skip_wall * 1e3:.0f}", f"{skip_host:.0f}", f"{skip_busy:.0f}",
         f"{skip_idle:.0f}"],
    ]
    cost_rows = [[name, *(f"{costs[k]:.1f}" for k in COST_KEYS),
                  f"{overhead_us(costs, plain):.1f}",
                  f"{overhead_us(costs, plain) / (full * 1e3):+.3%}"]
                 for name, costs in (("TeaCache, threshold 0", never),
                                     ("TeaCache, threshold 0, reuse_modulated", reuse))]
    text = "\n".join([
        environment(),
        f"Preset {preset}. Medians; wall = CUDA events around the call, host = perf_counter "
        f"around the call (no sync), GPU busy/idle from torch.profiler.",
        "",
        markdown_table(["call", "wall µs", "host µs", "GPU busy µs", "GPU idle inside µs"], rows),
        "",
        f"Skipped / full: wall {skip_wall / full:.3%}, GPU busy {skip_busy / (full * 1e3):.3%}; "
        f"shell / full: wall {shell_wall / full:.3%}.",
        "",
        f"Never-skipping overhead per call, from CUDA events in {STEADY} consecutive calls "
        f"(medians, µs; the unpatched model's first two blocks take {plain['ramp']:.1f} µs):",
        "",
        markdown_table(["policy", "indicator (block 0's AdaLN projection)",
                        "decision kernels", "GPU idle at the sync", "first two blocks",
                        "residual capture", "overhead µs", "of a full step"], cost_rows),
        f"Host synchronisations per call (cudaStreamSynchronize/cudaEventSynchronize in the "
        f"trace): unpatched {plain_syncs}, TeaCache computed {never_syncs}, TeaCache skipped "
        f"{skip_syncs}.",
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
