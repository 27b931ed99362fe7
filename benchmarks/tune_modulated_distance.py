"""Tile-shape sweep for modulated_distance on the GPU (deterministic reduction, bf16, writing m):
the figures behind the defaults in triton_kernels/modulated_distance.py.

    python -m benchmarks.tune_modulated_distance [--sizes FLUX Wan] [--in-place]
        [--kernel tile pipelined] [--block-d ...] [--warps ...] [--stages ...] [--per-sm ...]

tile: one tile of BLOCK_N rows × BLOCK_D columns per program. pipelined: whole rows on a
persistent grid of (programs per SM × SMs), the row loop software-pipelined over STAGES.
"""

import argparse
import importlib
import itertools

import torch

# The module, not the function of the same name that the package exports.
md = importlib.import_module("cachekern.kernels.modulation")

BLOCK_D, BLOCK_N, WARPS = (512, 1024, 2048, 4096, 8192), (1, 2, 4), (2, 4, 8, 16)

SHAPES = {"FLUX 1×4096×3072": (1, 4096, 3072), "Wan-720p 1×75600×5120": (1, 75600, 5120)}


def configurations(kernels, shape, block_ds, warps_list, stages_list, per_sm_list):
    out = []
    if "tile" in kernels:
        out += [dict(block_d=block_d, block_n=block_n, num_warps=warps)
                for block_d, block_n, warps in itertools.product(block_ds, BLOCK_N, warps_list)
                if not (block_d * block_n > 8192 or block_d >= 2 * shape[2] or
                        block_d < 32 * warps)]
    if "pipelined" in kernels:
        out += [dict(pipelined=True, block_n=block_n, num_warps=warps, stages=stages,
                     programs_per_sm=per_sm)
                for block_n, warps, stages, per_sm in itertools.product(
                    BLOCK_N, warps_list, stages_list, per_sm_list)]
    return out


def main(sizes, in_place, block_ds, warps_list, kernels=("tile",), stages_list=(3,),
         per_sm_list=(2,)):
    from benchmarks.harness import copy_bandwidth_gbs, environment, markdown_table, median_graph_us, warm_up_gpu

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
        for config in configurations(kernels, shape, block_ds, warps_list, stages_list,
                                     per_sm_list):
            # In place, m is written over prev, as TeaCache calls the kernel.
            fns = [lambda x=x, p=p, m=m, s=s: md._launch(x, p, s, s, 0, 1e-6, p if in_place else m,
                                                         True, **config)
                   for x, p, m, s in sets]
            try:
                us = median_graph_us(fns)
            except Exception as error:   # e.g. pipeline stages beyond shared memory
                print(config, type(error).__name__, str(error)[:120], flush=True)
                continue
            rows.append([name, "in place" if in_place else "separate m",
                         "pipelined" if config.get("pipelined") else "tile",
                         config.get("block_d", "row"), config["block_n"], config["num_warps"],
                         config.get("stages", "—"), config.get("programs_per_sm", "—"),
                         f"{us:.1f}", f"{us / floor:.2f}"])
            print(rows[-1], flush=True)
    print(environment())
    print(markdown_table(["size", "m written", "kernel", "BLOCK_D", "BLOCK_N", "warps", "stages",
                          "programs / SM", "µs", "/ floor"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["FLUX", "Wan"],
                        help="which sizes to sweep (name prefixes)")
    parser.add_argument("--in-place", action="store_true",
                        help="write m over prev (TeaCache's call) instead of a separate buffer")
    parser.add_argument("--block-d", nargs="+", type=int, default=list(BLOCK_D))
    parser.add_argument("--warps", nargs="+", type=int, default=list(WARPS))
    parser.add_argument("--kernel", nargs="+", default=["tile"], choices=["tile", "pipelined"])
    parser.add_argument("--stages", nargs="+", type=int, default=[3])
    parser.add_argument("--per-sm", nargs="+", type=int, default=[2])
    args = parser.parse_args()
    main(args.sizes, args.in_place, args.block_d, args.warps, args.kernel, args.stages,
         args.per_sm)
