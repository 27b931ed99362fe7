"""Eager against CUDA-graphed, uncached against TeaCache, for FLUX.1-dev, Wan2.1-14B and
HunyuanVideo dimensions (random bf16 weights): a full step, a skipped step, what deciding adds
to a step that computes, host synchronisations per call, and a whole generation on a fixed
pattern of computed steps against the ideal N/K; Block Caching's generation too, eager and
graphed, on the schedule one profiled generation gives; and the peers as they run
(benchmarks.graph_peers: diffusers' FirstBlockCache and TaylorSeer, cache-dit's DBCache).

    python -m benchmarks.bench_graphs_families --out graphs_families.md [--preset small]
        [--families flux,wan,hunyuan_video] [--compile]

The graphed baseline is the unpatched forward captured as one CUDA graph by hand (static
inputs, one replay, the output cloned), as a user who graphs would run it; TeaCache's graphed
calls are TeaCache(cuda_graphs=True)'s own. Calls are timed with CUDA events with the host
running ahead, as in a pipeline; medians. The never-skipping addition is the median of paired
differences of interleaved calls.
"""

import argparse
import statistics

import torch

import cachekern
from cachekern.block_caching.schedule import compute_fraction
from cachekern.models.blocks import cached_units
from cachekern.models.flops import counting_unit_flops
from benchmarks.graph_peers import peer_rows
from benchmarks.harness import (PRESETS, UserGraph, build_model, build_wan, environment,
                                make_inputs, markdown_table, report, syncs_per_call,
                                warm_up_gpu)

# HunyuanVideo (13B) as released, and a small one for checking the script.
HUNYUAN_CONFIGS = {
    "full": dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128,
                 num_layers=20, num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0,
                 patch_size=2, patch_size_t=1, qk_norm="rms_norm", guidance_embeds=True,
                 text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0,
                 rope_axes_dim=(16, 56, 56)),
    "small": dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                  num_layers=2, num_single_layers=2, num_refiner_layers=1, patch_size=2,
                  patch_size_t=1, guidance_embeds=True, text_embed_dim=32,
                  pooled_projection_dim=16, rope_axes_dim=(4, 6, 6)),
}
# Latents [B, C, latent frames, height/8, width/8]: 480p (832×480), 33 frames.
VIDEO_LATENTS = {"full": (1, 16, 9, 60, 104), "small": (1, 4, 3, 8, 8)}
TEXT_TOKENS = {"full": 256, "small": 7}


def _with_default_dtype(dtype, make):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda"):
            torch.manual_seed(0)
            return make().eval()
    finally:
        torch.set_default_dtype(previous)


def flux_case(preset):
    config = PRESETS[preset]
    model = build_model(config, torch.device("cuda"))
    inputs = make_inputs(config, model, 0, torch.device("cuda"))
    fixed = dict(hidden_states=inputs["latents"],
                 encoder_hidden_states=inputs["encoder_hidden_states"],
                 pooled_projections=inputs["pooled_projections"], img_ids=inputs["img_ids"],
                 txt_ids=inputs["txt_ids"], guidance=inputs["guidance"])
    return "FLUX.1-dev, 1024×1024" if preset == "full" else "FLUX, small", model, fixed, 1.0


def wan_case(preset):
    model = build_wan("14b" if preset == "full" else "small", torch.device("cuda"))
    g = torch.Generator("cuda").manual_seed(1)
    latents = torch.randn(VIDEO_LATENTS[preset], generator=g, device="cuda", dtype=torch.bfloat16)
    text = torch.randn(1, TEXT_TOKENS[preset] * 2, model.config.text_dim, generator=g,
                       device="cuda", dtype=torch.bfloat16)
    return ("Wan2.1-14B, 480p, 33 frames" if preset == "full" else "Wan, small"), model, \
        dict(hidden_states=latents, encoder_hidden_states=text), 1000.0


def hunyuan_case(preset):
    from diffusers import HunyuanVideoTransformer3DModel

    config = HUNYUAN_CONFIGS[preset]
    model = _with_default_dtype(torch.bfloat16, lambda: HunyuanVideoTransformer3DModel(**config))
    g = torch.Generator("cuda").manual_seed(1)
    latents = torch.randn(VIDEO_LATENTS[preset], generator=g, device="cuda",
                          dtype=torch.bfloat16)
    tokens = TEXT_TOKENS[preset]
    fixed = dict(hidden_states=latents,
                 encoder_hidden_states=torch.randn(1, tokens, config["text_embed_dim"],
                                                   generator=g, device="cuda",
                                                   dtype=torch.bfloat16),
                 encoder_attention_mask=torch.ones(1, tokens, device="cuda",
                                                   dtype=torch.bfloat16),
                 pooled_projections=torch.randn(1, config["pooled_projection_dim"], generator=g,
                                                device="cuda", dtype=torch.bfloat16),
                 guidance=torch.full((1,), 6000.0, device="cuda", dtype=torch.bfloat16))
    return ("HunyuanVideo, 480p, 33 frames" if preset == "full" else "HunyuanVideo, small"), \
        model, fixed, 1000.0


CASES = {"flux": flux_case, "wan": wan_case, "hunyuan_video": hunyuan_case}


class Calls:
    """kwargs of successive calls: the same inputs, a decreasing timestep."""

    def __init__(self, fixed, scale):
        self.fixed, self.scale = fixed, scale
        self.restart(100_000)

    def restart(self, steps):
        """Timesteps of a new generation of `steps` calls (the first one highest)."""
        self.sigmas = iter(torch.linspace(1.0, 0.02, steps).tolist())

    def __call__(self):
        t = torch.full((1,), next(self.sigmas) * self.scale, device="cuda",
                       dtype=torch.bfloat16)
        return dict(self.fixed, timestep=t, return_dict=False)


def event_ms(fn, reps):
    """Median ms of `reps` calls, host ahead, CUDA events."""
    pairs = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in pairs)


GENERATIONS = 3    # generations timed per row, the median: a single one is noisy on small models


def generation_ms(step, n, calls, generations=GENERATIONS, fresh=None):
    """The median wall time of n successive calls (one generation, GPU finished) over
    `generations` generations; `fresh()`, when given, is called before each (a peer whose
    state must start anew) and returns what to call after it."""
    times = []
    for _ in range(generations):
        after = fresh() if fresh is not None else None
        try:
            times.append(_one_generation_ms(step, n, calls))
        finally:
            if after is not None:
                after()
    return statistics.median(times)


def _one_generation_ms(step, n, calls):
    calls.restart(n)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


@torch.no_grad()
def measure(name, model, fixed, scale, reps, steps):
    kwargs = Calls(fixed, scale)
    eager = lambda: model(**kwargs())[0]  # noqa: E731
    eager()
    rows = {}
    rows["full, eager"] = (event_ms(eager, reps), syncs_per_call(eager))
    user = UserGraph(model, kwargs())
    graphed = lambda: user(**kwargs())  # noqa: E731
    rows["full, graphed by hand"] = (event_ms(graphed, reps), syncs_per_call(graphed))

    def patched(policy, warm):
        cachekern.patch(model, policy)
        for _ in range(warm):
            eager()
        return eager

    for graphs in (False, True):
        call = patched(cachekern.TeaCache(threshold=1e9, coefficients=None,
                                          compute_last_step=False, cuda_graphs=graphs), 3)
        label = "graphed" if graphs else "eager"
        rows[f"TeaCache skipped, {label}"] = (event_ms(call, reps), syncs_per_call(call))
        cachekern.unpatch(model)

    # Never skipping, graphed: paired with the hand-made graph, interleaved.
    call = patched(cachekern.TeaCache(threshold=0.0, coefficients=None,
                                      compute_last_step=False, cuda_graphs=True), 3)
    diffs = []
    for i in range(reps):
        times = {}
        for which in (("base", "cached") if i % 2 == 0 else ("cached", "base")):
            start, end = torch.cuda.Event(enable_timing=True), \
                torch.cuda.Event(enable_timing=True)
            start.record()
            (call if which == "cached" else graphed)()
            end.record()
            times[which] = (start, end)
        diffs.append(times)
    torch.cuda.synchronize()
    never = [d["cached"][0].elapsed_time(d["cached"][1]) -
             d["base"][0].elapsed_time(d["base"][1]) for d in diffs]
    rows["TeaCache never skipping, graphed: paired addition"] = (statistics.median(never),
                                                                 syncs_per_call(call))
    cachekern.unpatch(model)

    # One generation on a fixed pattern: the first two and every other step after computed.
    pattern = [s < 2 or s % 2 == 0 for s in range(steps)]
    k = sum(pattern)
    gens = {}
    for label, make in (("eager", lambda: eager), ("graphed", lambda: graphed)):
        generation_ms(make(), steps, kwargs, generations=1)     # warm-up
        gens[f"uncached, {label}"] = generation_ms(make(), steps, kwargs)
    for graphs in (False, True):
        policy = cachekern.TeaCache(compute_steps=pattern, forecast_order=1,
                                    num_inference_steps=steps, cuda_graphs=graphs)
        call = patched(policy, 0)
        generation_ms(call, steps, kwargs, generations=1)    # the first one captures
        gens[f"TeaCache, {'graphed' if graphs else 'eager'}"] = generation_ms(call, steps,
                                                                               kwargs)
        cachekern.unpatch(model)
    peers, peer_gens = peer_rows(model, eager, kwargs, steps, reps, event_ms, generation_ms,
                                 syncs_per_call)
    rows.update(peers)
    del user
    try:
        bc_gens, bc_ideal = block_caching_generations(model, eager, kwargs, steps)
        gens.update(bc_gens)
    except (RuntimeError, ValueError) as error:    # reported; the family's other rows kept
        print(f"{name}: Block Caching did not run: {error}", flush=True)
        bc_ideal = None
    return rows, gens, steps / k, bc_ideal, peer_gens


def block_caching_generations(model, eager, calls, steps, target=0.5):
    """Block Caching at this size: one uncached generation profiled, then the schedule that
    computes `target` of the block calls (order-1 forecasts), a generation eager and one
    graphed (captured on the generation before). The ideal is the inverse of the share of the
    blocks' FLOPs the schedule runs (each block's FLOPs counted on one call)."""
    def run():
        calls.restart(steps)
        for _ in range(steps):
            eager()
    profile = cachekern.profile(model, run)
    calls.restart(steps)
    with counting_unit_flops(model, cached_units(model)) as flops:
        eager()
    gens = {}
    for graphs in (False, True):
        policy = cachekern.BlockCaching(profile, target_compute=target, scale_shift=None,
                                        forecast_order=1, cuda_graphs=graphs)
        cachekern.patch(model, policy)
        try:
            for _ in range(2 if graphs else 1):     # sizes the buffers; then captures
                generation_ms(eager, steps, calls, generations=1)
            label = "graphed" if graphs else "eager"
            gens[f"Block Caching, {label}"] = generation_ms(eager, steps, calls)
        finally:
            cachekern.unpatch(model)
    return gens, 1 / compute_fraction(policy.schedule(), flops)


def main(preset, families, reps, steps, out_path, compile_blocks=False):
    warm_up_gpu()
    sections = [environment(), "", f"Random bf16 weights; medians of {reps} calls (CUDA "
                f"events, host ahead). Generation: {steps} calls, the median of "
                f"{GENERATIONS} generations; TeaCache computes steps 0, 1 "
                f"and every other one after (compute_steps, a first-order forecast), ideal N/K; "
                f"Block Caching computes half the block calls on the schedule a profiled "
                f"generation gives (first-order forecasts), ideal: the inverse of the share of "
                f"the blocks' FLOPs it runs."]
    for family in families:
        name, model, fixed, scale = CASES[family](preset)
        if compile_blocks:      # regional compilation: each block type compiles once
            model.compile_repeated_blocks(fullgraph=True)
            name += ", blocks compiled (inductor)"
        rows, gens, ideal, bc_ideal, peer_gens = measure(name, model, fixed, scale, reps, steps)
        full_eager, full_graph = rows["full, eager"][0], rows["full, graphed by hand"][0]
        table = []
        for label, (ms, syncs) in rows.items():
            if label.startswith("TeaCache never"):
                rel = f"{ms / full_graph:+.3%} of the graphed full step"
                value = f"{ms:+.3f}"
            else:
                rel = f"{ms / full_eager:.3%} of eager full, {ms / full_graph:.3%} of graphed"
                value = f"{ms:.3f}"
            table.append([label, value, rel, syncs])
        gen_rows = []
        for method, best in (("TeaCache", ideal), ("Block Caching", bc_ideal)):
            for kind in ("eager", "graphed"):
                if f"{method}, {kind}" not in gens:
                    continue
                base, cached = gens[f"uncached, {kind}"], gens[f"{method}, {kind}"]
                gen_rows.append([f"{method}, {kind}", f"{base:.1f}", f"{cached:.1f}",
                                 f"{base / cached:.3f}×", f"{best:.3f}×",
                                 f"{base / cached / best:.1%}"])
        for label, (base, cached, best) in peer_gens.items():
            gen_rows.append([label, f"{base:.1f}", f"{cached:.1f}", f"{base / cached:.3f}×",
                             f"{best:.3f}×", f"{base / cached / best:.1%}"])
        sections += ["", f"#### {name}", "",
                     markdown_table(["call", "ms", "relative", "host syncs per call"], table),
                     "",
                     markdown_table(["generation", "uncached ms", "cached ms", "speed-up",
                                     "ideal", "of ideal"], gen_rows)]
        del model
        torch.cuda.empty_cache()
        if out_path:        # what is measured so far, should a later family not finish
            with open(out_path, "w") as f:
                f.write("\n".join(sections) + "\n")
    report("\n".join(sections), out_path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out")
    parser.add_argument("--preset", default="full", choices=("full", "small"))
    parser.add_argument("--families", default="flux,wan,hunyuan_video")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--compile", action="store_true",
                        help="compile the blocks first (compile_repeated_blocks, inductor)")
    args = parser.parse_args()
    main(args.preset, args.families.split(","), args.reps, args.steps, args.out, args.compile)
