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


def bandwidth_rows(engine: str, median_wall_us):
    rows = []
    for mb in SIZES_MB:
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
        rows.append([engine, mb, f"{gbs(d2h_ours):.1f}", f"{gbs(d2h_torch):.1f}",
                     f"{d2h_torch / d2h_ours:.0%}", f"{gbs(h2d_ours):.1f}", f"{gbs(h2d_torch):.1f}",
                     f"{h2d_torch / h2d_ours:.0%}"])
        del cache, pinned, back, t
        torch.cuda.empty_cache()
    return rows


def overlap_row(engine: str, entry_mb=256, entries=8, iters=12, matmuls=6, trials=5):
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    tensors = [torch.randn((entry_mb << 20) // 2, device="cuda", dtype=torch.bfloat16)
               for _ in range(entries)]
    # Room for half the entries: each put pushes one out, each prefetch brings one back.
    cache = BlockCache(device_budget_bytes=(entries // 2) * (entry_mb << 20), engine=engine)
    for i, t in enumerate(tensors):
        cache.put(i, t)

    def loop(with_cache):
        c = a
        for it in range(iters):
            for _ in range(matmuls):
                c = torch.matmul(c, b) * 1e-4
            if with_cache:
                k = it % entries
                cache.put(k, tensors[k])                     # evicts an older entry to host
                cache.prefetch((k + entries // 2) % entries)  # brings one back early
        return c

    def timed(with_cache):
        torch.cuda.synchronize()
        start = time.perf_counter()
        loop(with_cache)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(True), timed(False)  # warm-up: kernels, pool, streams
    before = cache.stats()
    plain, cached = [], []
    for _ in range(trials):    # interleaved, so drift affects both alike
        plain.append(timed(False))
        cached.append(timed(True))
    after = cache.stats()
    moved = (after["bytes_device_to_host"] - before["bytes_device_to_host"]
             + after["bytes_host_to_device"] - before["bytes_host_to_device"]) / trials
    p, c = statistics.median(plain), statistics.median(cached)
    grown = after["host_chunk_allocations"] - before["host_chunk_allocations"]
    return [engine, f"{iters}×{matmuls} matmuls 8192² bf16", f"{p * 1e3:.1f}", f"{c * 1e3:.1f}",
            f"{(c - p) / p:+.1%}", f"{moved / 2**30:.2f}", f"{moved / 2**30 / p:.1f}", grown]


def main(out_path=None):
    from common import environment, markdown_table, median_wall_us, warm_up_gpu

    from cachekern import build_info

    warm_up_gpu()
    engines = ["native", "python"] if build_info()["native_loaded"] else ["python"]
    bw = [row for e in engines for row in bandwidth_rows(e, median_wall_us)]
    ov = [overlap_row(e) for e in engines]
    info = build_info()
    text = "\n".join([
        environment() + f"; cachekern._C built with CUDA {info['cuda_runtime_built']}, "
        f"pinned host memory: {info['pinned_host_memory']}",
        "",
        "Spill and fetch bandwidth, median of 15 (host time of the call + synchronize):",
        "",
        markdown_table(["engine", "entry MB", "spill GB/s", "torch D2H GB/s", "spill / torch",
                        "fetch GB/s", "torch H2D GB/s", "fetch / torch"], bw),
        "",
        "Overlap: loop time alone and with spills + prefetches every iteration (median of 5):",
        "",
        markdown_table(["engine", "loop", "alone ms", "with cache traffic ms", "slowdown",
                        "GiB moved per loop", "GiB/s moved", "pinned allocations while timed"], ov),
    ])
    print(text)
    if out_path:
        with open(out_path, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="also write the tables (markdown) here")
    main(parser.parse_args().out)
