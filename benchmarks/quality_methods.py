"""The settings the quality benchmark sweeps, one constructor per method. A setting says how many
steps it samples and how to apply its cache to a model (returning the function that removes it);
the sweeps are chosen to cover compute from the full run down to about a quarter of it."""

import ast
import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Callable, Optional

UNCACHED = "uncached"
FEWER_STEPS = "fewer steps"
TEACACHE = "cachekern TeaCache"
TEACACHE_FORECAST = "cachekern TeaCache forecast"
TEACACHE_STATIC = "cachekern TeaCache static schedule"
FIRST_BLOCK_CACHE = "diffusers FirstBlockCache"
TAYLORSEER = "diffusers TaylorSeer"
MAGCACHE = "diffusers MagCache"
SEACACHE = "diffusers SeaCache"
DBCACHE = "cache-dit DBCache F1B0"
DBCACHE_TAYLORSEER = "cache-dit DBCache F1B0 + TaylorSeer"
BLOCK_CACHING = "cachekern BlockCaching"
BLOCK_CACHING_FORECAST = "cachekern BlockCaching forecast"
BLOCK_CACHING_FITTED = "cachekern BlockCaching fitted forecast"
CACHEKERN_METHODS = (TEACACHE, TEACACHE_FORECAST, TEACACHE_STATIC, BLOCK_CACHING,
                     BLOCK_CACHING_FORECAST, BLOCK_CACHING_FITTED)
PEERS = (FIRST_BLOCK_CACHE, TAYLORSEER, MAGCACHE, SEACACHE, DBCACHE, DBCACHE_TAYLORSEER)
SOLVER_NAMES = {"euler": "Euler", "ddim": "DDIM", "dpm++": "DPM-Solver++(2M)", "unipc": "UniPC"}


@dataclass
class Setting:
    method: str
    label: str
    steps: int
    apply: Optional[Callable] = None   # model -> remove()
    before_generation: Optional[Callable] = None   # model -> None, before each generation
    sample_kwargs: Optional[dict] = None   # overrides of the run's sampling options (a solver)


def uncached(steps):
    return [Setting(UNCACHED, f"{steps} steps", steps)]


def fewer_steps(full_steps, fractions=(0.85, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25),
                scheduler=None):
    """Fewer steps of the run's own sampler, or (scheduler given) of another solver, from the
    full step count down."""
    counts = {max(2, round(full_steps * f)) for f in fractions}
    if scheduler is None:
        return [Setting(FEWER_STEPS, f"{n} steps", n)
                for n in sorted(counts - {full_steps}, reverse=True)]
    return [Setting(f"{FEWER_STEPS}, {SOLVER_NAMES[scheduler]}", f"{n} steps", n,
                    sample_kwargs=dict(scheduler=scheduler))
            for n in sorted(counts | {full_steps}, reverse=True)]


def teacache(steps, thresholds, coefficient_sets, forecast_order=0, forecast_time="timestep"):
    """coefficient_sets: {label: (coefficients, clamp)}, e.g. the published polynomial ("auto"),
    the raw distance (None), one fitted by cachekern.calibrate_teacache."""
    import cachekern

    def applier(threshold, coefficients, clamp):
        def apply(model):
            cachekern.patch(model, cachekern.TeaCache(
                threshold=threshold, coefficients=coefficients, clamp=clamp,
                num_inference_steps=steps, forecast_order=forecast_order,
                forecast_time=forecast_time))
            return lambda: cachekern.unpatch(model)
        return apply
    method = TEACACHE if forecast_order == 0 else f"{TEACACHE_FORECAST} order {forecast_order}" \
        + ("" if forecast_time == "timestep" else " in step index")
    return [Setting(method, f"threshold={t} coefficients={label}", steps,
                    applier(t, coefficients, clamp))
            for label, (coefficients, clamp) in coefficient_sets.items() for t in thresholds]


def static_schedules(steps, candidates):
    """candidates: {label: TeaCache keyword arguments} of static schedules (compute_steps with a
    forecast: a basis, or weights fitted by cachekern.fit_forecast)."""
    import cachekern

    def applier(options):
        def apply(model):
            cachekern.patch(model, cachekern.TeaCache(**options))
            return lambda: cachekern.unpatch(model)
        return apply
    return [Setting(TEACACHE_STATIC, label, steps, applier(options))
            for label, options in candidates.items()]


def block_caching(steps, profile, prepare, targets, scale_shifts=(None, "fit", "train"),
                  label="", forecast_order=0):
    """profile: recorded on held-out seeds; prepare(target, mode, order) fits or trains the
    parameters of that target's schedule (stored in the profile)."""
    import cachekern

    def applier(target, scale_shift):
        def apply(model):
            if scale_shift is not None:
                prepare(target, scale_shift, forecast_order)
            cachekern.patch(model, cachekern.BlockCaching(profile, target_compute=target,
                                                          scale_shift=scale_shift,
                                                          forecast_order=forecast_order))
            return lambda: cachekern.unpatch(model)
        return apply

    def method(scale_shift):
        if forecast_order == 0:
            return BLOCK_CACHING
        base = BLOCK_CACHING_FITTED if scale_shift == "fit" else BLOCK_CACHING_FORECAST
        return f"{base} order {forecast_order}"
    return [Setting(method(ss), f"{label}target_compute={t} scale_shift={ss}", steps,
                    applier(t, ss))
            for ss in scale_shifts for t in targets]


def enable_diffusers_cache(model, config):
    """model.enable_cache(config); returns the function that disables it. A class without
    diffusers' CacheMixin (PixArtTransformer2DModel in 0.42) gets the same hook applied the way
    enable_cache applies it, each call in one cache context (what cache_context would give a
    pipeline that batches CFG into one call), and removed by CacheMixin's own disable_cache."""
    if hasattr(model, "enable_cache"):
        model.enable_cache(config)
        return model.disable_cache
    from diffusers import hooks
    from diffusers.hooks.hooks import CacheContext, _set_cache_context
    from diffusers.models.cache_utils import CacheMixin

    appliers = {hooks.FirstBlockCacheConfig: hooks.apply_first_block_cache,
                hooks.MagCacheConfig: hooks.apply_mag_cache,
                hooks.TaylorSeerCacheConfig: hooks.apply_taylorseer_cache}
    if type(config) not in appliers:
        raise TypeError(f"no hook for {type(config).__name__} on {type(model).__name__}")
    appliers[type(config)](model, config)
    hooks.HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()
    model._cache_config = config
    enter = model.register_forward_pre_hook(
        lambda module, args: _set_cache_context(module, CacheContext("cond")))
    leave = model.register_forward_hook(lambda module, args, out: _set_cache_context(module, None))

    def disable():
        enter.remove(), leave.remove()
        CacheMixin.disable_cache(model)
    return disable


def _diffusers_cache(config_factory):
    def apply(model):
        return enable_diffusers_cache(model, config_factory())
    return apply


def first_block_cache(steps, thresholds):
    from diffusers.hooks import FirstBlockCacheConfig

    return [Setting(FIRST_BLOCK_CACHE, f"threshold={t}", steps,
                    _diffusers_cache(lambda t=t: FirstBlockCacheConfig(threshold=t)))
            for t in thresholds]


# TaylorSeer's strongest form: whole blocks forecast (by default it hooks only the attention
# modules, so every feed-forward still runs and its compute stays near the full run's).
WHOLE_BLOCKS = {"flux-photos": [r"transformer_blocks\.\d+", r"single_transformer_blocks\.\d+"],
                "pixart-scenes": [r"transformer_blocks\.\d+"], "wan-motion": [r"blocks\.\d+"]}


def taylorseer(steps, intervals, warmups=(1, 3), orders=(1, 2), whole_blocks=None):
    import torch
    from diffusers.hooks import TaylorSeerCacheConfig

    forms = {"attention": None}
    if whole_blocks:
        forms["blocks"] = whole_blocks
    return [Setting(TAYLORSEER if form == "attention" else f"{TAYLORSEER}, whole blocks",
                    f"cache_interval={k} disable_cache_before_step={w} max_order={o}", steps,
                    _diffusers_cache(lambda k=k, w=w, o=o, ids=ids: TaylorSeerCacheConfig(
                        cache_interval=k, disable_cache_before_step=w, max_order=o,
                        taylor_factors_dtype=torch.float32, cache_identifiers=ids)))
            for form, ids in forms.items() for o in orders for w in warmups for k in intervals]


def calibrate_magcache(model, generate, steps):
    """MagCache's own calibration (`calibrate=True` prints each branch's ratios at the end of a
    generation): the mean over the branches printed."""
    from diffusers.hooks import MagCacheConfig

    disable = enable_diffusers_cache(model, MagCacheConfig(calibrate=True,
                                                           num_inference_steps=steps))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            generate()
    finally:
        disable()
    runs = [ast.literal_eval(line) for line in printed.getvalue().splitlines()
            if line.startswith("[") and not line.startswith("[MagCache]")]
    if not runs or any(len(r) != steps for r in runs):
        raise RuntimeError(f"MagCache calibration printed no ratios of length {steps}: "
                           f"{printed.getvalue()[:500]!r}")
    return [sum(column) / len(column) for column in zip(*runs)]


def magcache(steps, thresholds, mag_ratios, max_skip_steps=(3,)):
    from diffusers.hooks import MagCacheConfig

    return [Setting(MAGCACHE, f"threshold={t} max_skip_steps={k}", steps,
                    _diffusers_cache(lambda t=t, k=k: MagCacheConfig(
                        threshold=t, max_skip_steps=k, num_inference_steps=steps,
                        mag_ratios=list(mag_ratios))))
            for k in max_skip_steps for t in thresholds]


def seacache(steps, sigmas, thresholds, orders=(0, 1), max_cached=(2, 4)):
    """diffusers' SeaCache (Wan T2V has its adapter in 0.42), residual order 0 (reuse) and 1
    (linear extrapolation). It reads the scheduler's step, sigma and step count from each
    cache_context, as WanPipeline passes them; the reference sampler names only the branch, so
    the setting wraps the model's cache_context to add them (per branch, counting its calls)."""
    from diffusers.hooks import SeaCacheConfig

    def applier(threshold, order, k):
        def apply(model):
            disable = enable_diffusers_cache(model, SeaCacheConfig(
                threshold=threshold, residual_order=order, max_consecutive_cached=k))
            original, calls = model.cache_context, {}

            def cache_context(name, **kwargs):
                i = calls.get(name, 0) % steps
                calls[name] = i + 1
                return original(name, step_index=i, sigma=float(sigmas[i]),
                                num_inference_steps=steps)

            model.cache_context = cache_context

            def remove():
                del model.cache_context
                disable()
            return remove
        return apply

    return [Setting(SEACACHE, f"threshold={t} residual_order={o} max_consecutive_cached={k}",
                    steps, applier(t, o, k))
            for o in orders for k in max_cached for t in thresholds]


def quiet_cache_dit():
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("cache_dit"):
            logging.getLogger(name).setLevel(logging.WARNING)


def dbcache(steps, thresholds, warmups=(2,), calibrator_orders=(None, 1)):
    """cache-dit's DBCache with one front block computed and none at the back (F1B0, its
    First-Block-Cache configuration), transformer-only mode, CFG branches cached separately;
    without a calibrator (reuse) and with its TaylorSeer calibrator (forecast; order 1, its
    default: order 2 came out identical on pixart-scenes)."""
    try:
        import cache_dit
    except ImportError:
        return []
    quiet_cache_dit()

    def applier(threshold, warmup, order):
        def apply(model):
            calibrator = (None if order is None else
                          cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=order))
            cache_dit.enable_cache(model, cache_config=cache_dit.DBCacheConfig(
                Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold,
                max_warmup_steps=warmup, num_inference_steps=steps, enable_separate_cfg=True),
                calibrator_config=calibrator)
            quiet_cache_dit()
            return lambda: cache_dit.disable_cache(model)
        return apply

    def refresh(model):
        # Transformer-only mode, as cache-dit documents it per request: without a refresh, its
        # state runs on from one generation into the next (seen here: the fifth generation of a
        # setting came out different from the first).
        cache_dit.refresh_context(model, num_inference_steps=steps)
    return [Setting(DBCACHE if order is None else DBCACHE_TAYLORSEER,
                    f"threshold={t} max_warmup_steps={w}" +
                    ("" if order is None else f" taylorseer_order={order}"), steps,
                    applier(t, w, order), refresh)
            for order in calibrator_orders for w in warmups for t in thresholds]
