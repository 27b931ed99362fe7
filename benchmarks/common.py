"""Helpers shared by the GPU benchmarks: environment line, timing, copy-bandwidth ceiling, tables."""

import statistics
import time
import warnings

import torch


def environment() -> str:
    import triton

    if not torch.cuda.is_available():
        return f"CPU, torch {torch.__version__}, triton {triton.__version__}"
    props = torch.cuda.get_device_properties(0)
    return (f"GPU: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}), triton {triton.__version__}")


def warm_up_gpu(seconds=2.0):
    """Runs matmuls until the clocks have left idle: the first measurements of a cold GPU are
    otherwise taken at a fraction of its clock."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a = (a @ a) * 1e-4
        torch.cuda.synchronize()


def median_us(fn, warmup_ms=50, rep_ms=300) -> float:
    """Median GPU time of fn in microseconds (CUDA events, L2 flushed before each run)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median") * 1e3


def median_graph_us(fns, calls_per_graph=24, trials=15) -> float:
    """Median GPU time per call of the callables in `fns`, captured in one CUDA graph that calls
    them in turn and timed over its replays. A graph removes the host's launch overhead from the
    measurement (what is left is the kernels themselves), and cycling through several input
    sets larger than L2 together keeps each call reading from memory, not from the cache."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for fn in fns:   # compile and autotune outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls_per_graph):
            fns[i % len(fns)]()
    graph.replay()
    times = []
    for _ in range(trials):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls_per_graph)
    return statistics.median(times)


def median_wall_us(fn, reps=15, warmup=3) -> float:
    """Median host time of fn followed by a device synchronize, in microseconds."""
    for _ in range(warmup):
        fn()
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def wall_times(fn, passes):
    """(fn's last output, wall seconds of each of `passes` calls), each call between device
    synchronisations (none on a machine without CUDA)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times, out = [], None
    for _ in range(passes):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return out, times


def copy_bandwidth_gbs(nbytes=2 << 30) -> float:
    """Device-to-device copy bandwidth (bytes read + bytes written per second), the ceiling a
    memory-bound kernel is compared with."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src))
    return 2 * nbytes / (us * 1e-6) / 1e9


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(text: str, out_path=None) -> None:
    """Prints a benchmark's report and, when asked, writes it to a file as well."""
    print(text)
    if out_path:
        with open(out_path, "w") as f:
            f.write(text + "\n")


def syncs_per_call(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    # Only the reports of a synchronising call (torch also warns, once, that the debug mode
    # is a prototype, and that warning mentions "synchronizing operations" too).
    return sum(str(w.message).startswith("called a synchronizing") for w in caught)
