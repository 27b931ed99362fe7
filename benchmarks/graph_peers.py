"""The peers as they run, for bench_graphs_families' tables: diffusers' FirstBlockCache and
TaylorSeer (whole blocks forecast) and cache-dit's DBCache F1B0, each as its library applies it
(eager: none of them captures a graph). Per peer: a skipped call (FirstBlockCache and cache-dit
at a threshold that always skips, TaylorSeer at an interval past the generation; block 0 runs
for the first two), host synchronisations per call, and TaylorSeer's generation on its fixed
pattern (cache_interval=2 after two computed steps) against its ideal N/K, K the steps whose
blocks ran, counted on the last block's first submodule; its library enabled anew for each
timed generation, so each starts from fresh state."""

import torch

from benchmarks.quality_methods import enable_diffusers_cache, quiet_cache_dit


def _first_block_cache(model, steps):
    from diffusers.hooks import FirstBlockCacheConfig
    return enable_diffusers_cache(model, FirstBlockCacheConfig(threshold=1e9))


def _taylorseer(model, steps, interval=1000):
    from diffusers.hooks import TaylorSeerCacheConfig
    lists = [name for name, module in model.named_children()
             if isinstance(module, torch.nn.ModuleList) and "block" in name]
    return enable_diffusers_cache(model, TaylorSeerCacheConfig(
        cache_interval=interval, disable_cache_before_step=2, max_order=1,
        taylor_factors_dtype=torch.float32,
        cache_identifiers=[rf"{name}\.\d+" for name in lists]))


def _cache_dit(model, steps):
    import cache_dit
    quiet_cache_dit()
    cache_dit.enable_cache(model, cache_config=cache_dit.DBCacheConfig(
        Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=1e9,
        max_warmup_steps=1, num_inference_steps=steps))
    quiet_cache_dit()
    return lambda: cache_dit.disable_cache(model)


PEERS = {"diffusers FirstBlockCache": _first_block_cache,
         "diffusers TaylorSeer, whole blocks": _taylorseer,
         "cache-dit DBCache F1B0": _cache_dit}


def _in_context(model, call):
    def run():
        with model.cache_context("cond"):
            return call()
    return run if hasattr(model, "cache_context") else call


def _last_block_unit(model):
    lists = [module for name, module in model.named_children()
             if isinstance(module, torch.nn.ModuleList) and "block" in name and len(module)]
    return next(iter(lists[-1][-1].children()))


def peer_rows(model, eager, calls, steps, reps, event_ms, generation_ms, syncs_per_call):
    """{label: (ms, host syncs)} of each peer's skipped call, and {label: (uncached ms, cached
    ms, ideal)} of TaylorSeer's generation; a peer that cannot run is reported and left out."""
    rows, gens = {}, {}
    for name, enable in PEERS.items():
        try:
            disable = enable(model, 100_000)
        except (ImportError, RuntimeError, ValueError, TypeError) as error:
            print(f"{name}: not run: {error}", flush=True)
            continue
        try:
            call = _in_context(model, eager)
            calls.restart(100_000)
            for _ in range(3):          # computed, then skipped ones
                call()
            rows[f"{name} skipped, eager"] = (event_ms(call, reps), syncs_per_call(call))
        finally:
            disable()
    try:
        ran = []
        hook = _last_block_unit(model).register_forward_pre_hook(lambda *_: ran.append(1))
        try:
            uncached = generation_ms(eager, steps, calls)

            def fresh():            # enabled anew for each generation: its state starts over
                ran.clear()
                return _taylorseer(model, steps, interval=2)
            cached = generation_ms(_in_context(model, eager), steps, calls, fresh=fresh)
            computed = len(ran)     # the last generation's
        finally:
            hook.remove()
        gens["diffusers TaylorSeer, whole blocks, eager"] = (uncached, cached,
                                                            steps / max(computed, 1))
    except (RuntimeError, ValueError, TypeError) as error:
        print(f"TaylorSeer generation: not run: {error}", flush=True)
    return rows, gens
