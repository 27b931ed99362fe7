"""Tile-shape sweep for modulated_distance on the GPU (deterministic reduction, bf16, writing m):
the figures behind the defaults in triton_kernels/modulated_distance.py.

    cd benchmarks && python tune_modulated_distance.py [--sizes FLUX Wan] [--in-place]
"""

import argparse
import importlib
import itertools

import torch

# The module, not the function of the same name that the package exports.
md = importlib.import_module("cachekern.triton_kernels.modulated_distance")

BLOCK_D, BLOCK_N, WARPS = (512, 1024, 2048, 4096, 8192), (1, 2, 4), (2, 4, 8, 16)

SHAPES = {"FLUX 1×4096×3072": (1, 4096, 3072), "Wan-720p 1×75600×5120": (1, 75600, 5120)}


def main(sizes, in_place, block_ds, warps_list):
    from common import copy_bandwidth_gbs, environment, markdown_table, median_graph_us, warm_up_gpu

    warm_up_gpu()
    bandwidth = copy_bandwidth_gbs()
    rows = []
    for name, shape in SHAPES.items():
        if not any(name.startswith(prefix) for prefix in sizes):
            continue
        sets = []
        for _ in range(4 if shape[1] < 10000 else 1):
            x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
            sets.append((x, torch.randn_like(x), torch.empty_like(x),
                         0.1 * torch.randn(shape[0], shape[2], device="cuda", dtype=x.dtype)))
        floor = 3 * sets[0][0].numel() * 2 / (bandwidth * 1e9) * 1e6
        for block_d, block_n, warps in itertools.product(block_ds, BLOCK_N, warps_list):
            if block_d * block_n > 8192 or block_d >= 2 * shape[2] or block_d < 32 * warps:
                continue
            # In place, m is written over prev, as TeaCache calls the kernel.
            fns = [lambda x=x, p=p, m=m, s=s: md._launch(x, p, s, s, 0, 1e-6, p if in_place else m,
                                                         True,
                                                         block_d=block_d, block_n=block_n,
                                                         num_warps=warps)
                   for x, p, m, s in sets]
            us = median_graph_us(fns)
            rows.append([name, "in place" if in_place else "separate m", block_d, block_n, warps, f"{us:.1f}", f"{us / floor:.2f}"])
            print(rows[-1], flush=True)
    print(environment())
    print(markdown_table(["size", "m written", "BLOCK_D", "BLOCK_N", "warps", "µs", "/ floor"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["FLUX", "Wan"],
                        help="which sizes to sweep (name prefixes)")
    parser.add_argument("--in-place", action="store_true",
                        help="write m over prev (TeaCache's call) instead of a separate buffer")
    parser.add_argument("--block-d", nargs="+", type=int, default=list(BLOCK_D))
    parser.add_argument("--warps", nargs="+", type=int, default=list(WARPS))
    args = parser.parse_args()
    main(args.sizes, args.in_place, args.block_d, args.warps)
