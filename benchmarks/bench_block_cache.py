"""BlockCache on a GPU: spill (device to host) and fetch (host to device) bandwidth against torch's
own pinned copies, and whether spilling/prefetching overlaps with compute.

    python benchmarks/bench_block_cache.py --out benchmarks/results_block_cache.md

Bandwidth: entries of 64 MB to 1 GB. Ours: `put` into a cache whose device budget is 0 (the
entry spills at once: one D2H copy on the side stream) and `get` of it (one H2D copy), each
followed by a synchronize. Torch: `pinned.copy_(t, non_blocking=True)` into a preallocated pinned
buffer (what `t.to("cpu", non_blocking=True)` does, minus the allocation) and back.

Overlap: a loop of large bf16 matmuls on the compute stream, alone and with, every iteration,
a `put` that pushes an older entry out to host memory and a `prefetch` that brings another back.
The copies run on the cache's side stream, so the loop should barely slow down.
"""

import argparse
import statistics
import time

import torch

from cachekern import BlockCache

SIZES_MB = [64, 256, 1024]


def bandwidth_row(engine: str, mb: int, median_wall_us):
    nbytes = mb << 20
    t = torch.randn(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    cache = BlockCache(device_budget_bytes=0, engine=engine)
    cache.put("warm", t)           # allocates the pinned pool once
    cache.evict("warm")
    d2h_ours = median_wall_us(lambda: cache.put("k", t))
    h2d_ours = median_wall_us(lambda: cache.get("k"))
    assert torch.equal(cache.get("k"), t)
    pinned = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    back = torch.empty_like(t)
    d2h_torch = median_wall_us(lambda: pinned.copy_(t, non_blocking=True))
    h2d_torch = median_wall_us(lambda: back.copy_(pinned, non_blocking=True))
    gbs = lambda us: nbytes / (us * 1e-6) / 1e9  # noqa: E731
    return [engine, mb, f"{gbs(d2h_ours):.1f}", f"{gbs(d2h_torch):.1f}",
            f"{d2h_torch / d2h_ours:.0%}", f"{gbs(h2d_ours):.1f}", f"{gbs(h2d_torch):.1f}",
            f"{h2d_torch / h2d_ours:.0%}"]


def bandwidth_rows(engine: str, median_wall_us):
    rows = []
    for mb in SIZES_MB:
        rows.append(bandwidth_row(engine, mb, median_wall_us))
        torch.cuda.empty_cache()   # the row's tensors are gone with its frame
    return rows


def overlap_row(engine: str, entry_mb=128, entries=8, iters=12, matmuls=6, trials=5):
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    tensors = [torch.randn((entry_mb << 20) // 2, device="cuda", dtype=torch.bfloat16)
               for _ in range(entries)]
    # Room for half the entries: each put pushes one out, each prefetch brings one back.
    cache = BlockCache(device_budget_bytes=(entries // 2) * (entry_mb << 20), engine=engine)
    for i, t in enumerate(tensors):
        cache.put(i, t)
    put_host_us = []

    def loop(compute, traffic):
        c = a
        for it in range(iters):
            if compute:
                for _ in range(matmuls):
                    c = torch.matmul(c, b) * 1e-4
            if traffic:
                k = it % entries
                start = time.perf_counter()
                cache.put(k, tensors[k])                     # evicts an older entry to host
                cache.prefetch((k + entries // 2) % entries)  # brings one back early
                put_host_us.append((time.perf_counter() - start) * 1e6)
        return c

    def timed(compute, traffic):
        torch.cuda.synchronize()
        start = time.perf_counter()
        loop(compute, traffic)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    for mode in ((True, True), (True, False), (False, True)):  # warm-up: kernels, pool, streams
        timed(*mode)
    before = cache.stats()
    put_host_us.clear()
    results = {mode: [] for mode in ((True, False), (False, True), (True, True))}
    for _ in range(trials):    # interleaved, so drift affects every mode alike
        for mode in results:
            results[mode].append(timed(*mode))
    after = cache.stats()
    compute, traffic, both = (statistics.median(results[m]) for m in
                              ((True, False), (False, True), (True, True)))
    hidden = (compute + traffic - both) / min(compute, traffic)
    grown = after["host_chunk_allocations"] - before["host_chunk_allocations"]
    waits = after["host_waits"] - before["host_waits"]
    return [engine, f"{iters}×{matmuls} matmuls 8192² bf16, {entry_mb} MB entries",
            f"{compute * 1e3:.1f}", f"{traffic * 1e3:.1f}", f"{both * 1e3:.1f}",
            f"{(both - compute) / compute:+.1%}", f"{hidden:.0%}",
            f"{statistics.median(put_host_us):.0f}", grown, waits]


def main(out_path=None):
    from benchmarks.harness import environment, markdown_table, median_wall_us, report, warm_up_gpu

    from cachekern import build_info

    warm_up_gpu()
    engines = ["native", "python"] if build_info()["native_loaded"] else ["python"]
    bw = [row for e in engines for row in bandwidth_rows(e, median_wall_us)]
    ov = [overlap_row(e) for e in engines]
    info = build_info()
    text = "\n".join([
        environment() + f"; cachekern.store._C built with CUDA {info['cuda_runtime_built']}, "
        f"pinned host memory: {info['pinned_host_memory']}",
        "",
        "Spill and fetch bandwidth, median of 15 (host time of the call + synchronize):",
        "",
        markdown_table(["engine", "entry MB", "spill GB/s", "torch D2H GB/s", "spill / torch",
                        "fetch GB/s", "torch H2D GB/s", "fetch / torch"], bw),
        "",
        "Overlap: a matmul loop alone, the cache traffic alone (a put that spills and a prefetch "
        "every iteration), and both together; median of 5, interleaved. hidden = share of the "
        "shorter of the two that disappears when they run together (100% = full overlap).",
        "",
        markdown_table(["engine", "loop", "compute ms", "traffic ms", "both ms",
                        "slowdown vs compute", "hidden", "host µs per put+prefetch",
                        "pinned allocations while timed", "host waits while timed"], ov),
    ])
    report(text, out_path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="also write the tables (markdown) here")
    main(parser.parse_args().out)
