"""Block Caching with more cached residuals than the device budget holds, at Wan2.1-14B
dimensions: the slowdown against an unlimited budget, and the bytes the block cache moved.

    python -m benchmarks.bench_block_caching_offload --out offload.md
    python -m benchmarks.bench_block_caching_offload --preset small        # a check of the script (CPU too)

WanTransformer3DModel with Wan2.1-T2V-14B's configuration (40 blocks, hidden 5120, FFN 13824),
random bf16 weights, 720p × 81 frames (latents 16 × 21 × 90 × 160: 75,600 tokens; one block's
residual is 774 MB, all 40 of them 31 GB). A schedule of `--steps` steps on which every block is
computed at step 0 and half the blocks are reused at each later step (even blocks at odd steps,
odd blocks at even steps); the steps are a stand-in sampler (x ← x − 0.1 · output), which is all
the cache sees. The same generation runs with the residuals all on the device and with a device
budget of `--budget-gib`, the rest in pinned host memory, fetched one reused block ahead; the
outputs must agree bit for bit. Timings: wall time of whole generations after a warm-up one
(which also grows the pinned pool), median of `--passes`.
"""

import argparse
import statistics

import torch

from benchmarks.harness import build_wan, wan_inputs

import cachekern
from cachekern.models.blocks import cached_units
from cachekern.block_caching.profile import Profile

PRESETS = {"wan14b-720p": ("14b", "720p"), "small": ("small", "small")}


def alternating_profile(model, steps):
    """A profile whose Eq. 7 schedule (delta 1) computes every block at step 0 and then reuses
    even blocks at odd steps and odd blocks at even steps."""
    units = [u.name for u in cached_units(model)]
    change = [[float("nan")] + [0.6 if (s + i) % 2 else 2.0 for s in range(1, steps)]
              for i in range(len(units))]
    return Profile(type(model).__name__, units, change, timesteps=[None] * steps)


def generate(model, latents, text, steps):
    x = latents
    for s in range(steps):
        t = torch.full((1,), 999.0 - 900.0 * s / max(1, steps - 1), device=x.device)
        out = model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        x = x - 0.1 * out
    return x


@torch.no_grad()
def main(preset, steps, budget_gib, passes, out_path):
    from benchmarks.harness import environment, markdown_table, report, wall_times

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config, size = PRESETS[preset]
    model = build_wan(config, device)
    latents, text = wan_inputs(model, size, device)
    profile = alternating_profile(model, steps)
    budget = int(budget_gib * (1 << 30))
    rows, outputs, cache_stats = [], {}, None
    for label, device_budget in (("all on the device", None), (f"budget {budget_gib:g} GiB",
                                                                budget)):
        handle = cachekern.patch(model, cachekern.BlockCaching(
            profile, delta=1.0, scale_shift=None, device_budget_bytes=device_budget))
        generate(model, latents, text, steps)          # warm-up: kernels, allocator, pinned pool
        before = handle.stats().get("block_cache", {})
        outputs[label], times = wall_times(lambda: generate(model, latents, text, steps),
                                           passes)
        stats = handle.stats()
        if device_budget is not None:
            after = stats["block_cache"]
            cache_stats = {k: after[k] - before.get(k, 0) for k in (
                "bytes_device_to_host", "bytes_host_to_device", "spills", "prefetches", "hits",
                "misses", "host_waits")}
            cache_stats["peak_device_bytes"] = after["peak_device_bytes"]
            cache_stats["host_bytes"] = after["host_bytes"]
            entries = after["entries"]
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        else:
            peak = float("nan")
        rows.append([label, f"{statistics.median(times):.3f}", ", ".join(f"{t:.3f}" for t in times),
                     f"{peak:.1f}"])
        cachekern.unpatch(model)
        del handle
    base = float(rows[0][1])
    for row in rows:
        row.insert(2, f"{float(row[1]) / base - 1:+.2%}")
    same = torch.equal(*outputs.values())
    tokens = latents[0, 0].numel() // 4
    per_block = tokens * model.config.num_attention_heads * model.config.attention_head_dim * \
        latents.element_size()
    text_out = "\n".join([
        environment(),
        f"Preset {preset}: WanTransformer3DModel, {model.config.num_layers} blocks, latents "
        f"{tuple(latents.shape)} ({tokens} tokens), {latents.dtype}, random weights; {steps} "
        f"steps, schedule computes {handle_compute(profile):.3f} of the block calls; one block's "
        f"residual {per_block / 2**20:.0f} MiB, all {entries} cached residuals "
        f"{entries * per_block / 2**30:.1f} GiB "
        f"against a device budget of {budget_gib:g} GiB. Median of {passes} generations after a "
        f"warm-up one.",
        "",
        markdown_table(["residuals", "generation s", "slowdown", "each pass s",
                        "peak GPU memory GiB"], rows),
        "",
        "Block cache traffic in the timed generations (budget run): " +
        ", ".join(f"{k} {v / 2**30:.1f} GiB" if "bytes" in k else f"{k} {v}"
                  for k, v in cache_stats.items()) + ".",
        f"Outputs with and without the budget equal bit for bit: {same}.",
    ])
    report(text_out, out_path)
    if not same:
        raise SystemExit("the budgeted generation differs from the unlimited one")


def handle_compute(profile):
    from cachekern.block_caching.schedule import compute_fraction

    return compute_fraction(profile.schedule(delta=1.0))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="wan14b-720p", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--budget-gib", type=float, default=8.0)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    main(args.preset, args.steps, args.budget_gib, args.passes, args.out)
