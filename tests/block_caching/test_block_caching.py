"""Block Caching (cachekern.profile, Profile, BlockCaching) on real diffusers classes: the
reference models' UNet2DConditionModel and FluxTransformer2DModel at their recipes' sizes
(untrained), sampled with DDIM and with flow-matching Euler + CFG."""

import math

import pytest
import torch

import cachekern
from cachekern import reference_models
from cachekern.block_caching.fit import ChannelFit
from cachekern.block_caching.profile import Profile, schedule_key
from cachekern.block_caching.schedule import compute_fraction, delta_for_compute, derive_schedule

pytest.importorskip("diffusers")
NAN = math.nan


# -- schedules ------------------------------------------------------------------------------------
def test_schedule_follows_eq7_on_a_hand_computed_example():
    change = [[NAN, 0.2, 0.2, 0.2, 0.5, 0.1],     # accumulates 0.2, 0.4, (0.6: compute), 0.5, (0.6)
              [NAN, 1.0, 0.0, 0.0, 0.0, 0.0],     # 1.0 > delta: compute, then nothing changes
              [NAN, 0.1, NAN, 0.1, 0.1, 0.1]]     # NaN: compute, never reuse on garbage
    assert derive_schedule(change, 0.5) == [
        [True, False, False, True, False, True],
        [True, True, False, False, False, False],
        [True, False, True, False, False, False]]
    assert derive_schedule(change, 0.0) == [[True] * 6] * 3    # even where nothing changed
    assert compute_fraction(derive_schedule(change, 0.5)) == 7 / 18


def test_delta_for_compute_meets_the_target_with_the_smallest_delta():
    g = torch.Generator().manual_seed(0)
    change = (torch.rand(5, 12, generator=g) * 0.3).tolist()
    for target in (0.9, 0.5, 0.25):
        delta = delta_for_compute(change, target)
        assert compute_fraction(derive_schedule(change, delta)) <= target
        assert compute_fraction(derive_schedule(change, delta * 0.999)) > target
    with pytest.raises(ValueError, match="target_compute"):
        delta_for_compute(change, 0.05)           # below computing only the first step
    with pytest.raises(ValueError, match="delta"):
        derive_schedule(change, -1)


def test_the_closed_form_fit_recovers_known_scale_and_shift():
    g = torch.Generator().manual_seed(1)
    scale, shift = torch.randn(7, generator=g), torch.randn(7, generator=g)
    fit = ChannelFit()
    for _ in range(3):                            # accumulated over several batches
        x = torch.randn(50, 7, generator=g) * 3
        fit.add(x, x * scale + shift + 1e-6 * torch.randn(50, 7, generator=g))
    got_scale, got_shift = fit.solve()
    torch.testing.assert_close(got_scale.float(), scale, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_shift.float(), shift, rtol=0, atol=1e-5)
    flat = ChannelFit()
    flat.add(torch.ones(10, 2), torch.randn(10, 2, generator=g))
    assert flat.solve()[0].tolist() == [1.0, 1.0]  # no spread in x: scale 1


# -- on the models --------------------------------------------------------------------------------
UNET_STEPS = 8
FLUX_STEPS = 6


@pytest.fixture(scope="module")
def unet():
    return reference_models.create("unet-digits", seed=4)


@pytest.fixture(scope="module")
def flux():
    return reference_models.create("flux-photos", seed=5)


def unet_run(ref, seeds=(0, 1), steps=UNET_STEPS):
    return ref.sample([3, 7], list(seeds), steps=steps, scheduler="ddim")


def flux_run(ref, seeds=(0, 1), steps=FLUX_STEPS):
    return ref.sample([2, 5], list(seeds), steps=steps)


def family_case(family, request):
    """(reference model, its profile, its run) of a test parametrised by "unet" / "flux"."""
    run = unet_run if family == "unet" else flux_run
    return request.getfixturevalue(family), request.getfixturevalue(f"{family}_profile"), run


@pytest.fixture(scope="module")
def unet_profile(unet):
    return cachekern.profile(unet.model, lambda: unet_run(unet, (10, 11)), runs=2, resnets=True)


@pytest.fixture(scope="module")
def flux_profile(flux):
    return cachekern.profile(flux.model, lambda: flux_run(flux, (10, 11)))


def test_a_profile_records_every_block_and_step(unet, unet_profile, flux_profile):
    assert unet_profile.steps == UNET_STEPS and flux_profile.steps == FLUX_STEPS
    assert len(unet_profile.units) == 18 and unet_profile.resnets     # 7 attention + 11 ResNet
    assert len(flux_profile.units) == 8 and flux_profile.branches == ["cond", "uncond"]
    for prof in (unet_profile, flux_profile):
        assert all(math.isnan(row[0]) for row in prof.change)
        assert all(v > 0 and math.isfinite(v) for row in prof.change for v in row[1:])
    attention_only = cachekern.profile(unet.model, lambda: unet_run(unet, (10, 11)))
    assert len(attention_only.units) == 7
    assert all("attentions" in name for name in attention_only.units)


@pytest.mark.parametrize("family", ["unet", "flux"])
def test_delta_zero_is_bitwise_uncached_and_unpatch_restores(family, request):
    ref, prof, run = family_case(family, request)
    uncached = run(ref)
    with cachekern.patched(ref.model, cachekern.BlockCaching(prof, delta=0.0,
                                                              scale_shift=None)) as handle:
        assert torch.equal(run(ref), uncached)
        assert handle.stats()["blocks_reused"] == 0
    assert all("forward" not in vars(m) for m in ref.model.modules())
    assert torch.equal(run(ref), uncached)


@pytest.mark.parametrize("family", ["unet", "flux"])
def test_reuse_follows_the_schedule_and_changes_the_output(family, request):
    ref, prof, run = family_case(family, request)
    uncached = run(ref)
    policy = cachekern.BlockCaching(prof, target_compute=0.5, scale_shift=None)
    schedule = policy.schedule()
    with cachekern.patched(ref.model, policy) as handle:
        cached = run(ref)
        stats = handle.stats()
        history = list(handle.history)
    calls_per_step = 2 if family == "flux" else 1          # Flux: CFG as two calls, one schedule
    reused = sum(not c for row in schedule for c in row) * calls_per_step
    assert stats["blocks_reused"] == reused > 0
    assert stats["blocks_computed"] + reused == len(prof.units) * prof.steps * calls_per_step
    assert [h["step"] for h in history] == [s for s in range(prof.steps)
                                            for _ in range(calls_per_step)]
    assert not torch.equal(cached, uncached) and cached.isfinite().all()


def test_unit_scale_and_zero_shift_equal_plain_reuse(flux, flux_profile):
    plain = cachekern.BlockCaching(flux_profile, target_compute=0.5, scale_shift=None)
    schedule = plain.schedule()
    with cachekern.patched(flux.model, plain):
        expected = flux_run(flux)
    c = flux.model.config.num_attention_heads * flux.model.config.attention_head_dim
    identity = {(u, s, k): (torch.ones(c), torch.zeros(c))
                for u, row in enumerate(schedule) for s, compute in enumerate(row)
                if not compute for k in range(2)}
    flux_profile.scale_shift[schedule_key(schedule)] = identity
    try:
        with cachekern.patched(flux.model, cachekern.BlockCaching(
                flux_profile, target_compute=0.5, scale_shift="fit")):
            assert torch.equal(flux_run(flux), expected)
    finally:
        del flux_profile.scale_shift[schedule_key(schedule)]


def test_fitted_scale_shift_is_stored_used_and_saved(unet, unet_profile, tmp_path):
    with pytest.raises(ValueError, match="fit_scale_shift"):
        cachekern.BlockCaching(unet_profile, target_compute=0.5, scale_shift="fit")
        cachekern.patch(unet.model, cachekern.BlockCaching(unet_profile, target_compute=0.5))
    key = cachekern.fit_scale_shift(unet_profile, unet.model,
                                    lambda: unet_run(unet, (10, 11)), target_compute=0.5)
    params = unet_profile.scale_shift[key]
    schedule = unet_profile.schedule(target_compute=0.5)
    assert {(u, s) for u, s, _ in params} == {(u, s) for u, row in enumerate(schedule)
                                             for s, c in enumerate(row) if not c}
    with cachekern.patched(unet.model, cachekern.BlockCaching(unet_profile, target_compute=0.5,
                                                               scale_shift=None)):
        plain = unet_run(unet)
    with cachekern.patched(unet.model, cachekern.BlockCaching(unet_profile, target_compute=0.5)):
        fitted = unet_run(unet)
    assert not torch.equal(fitted, plain)

    path = tmp_path / "unet.profile"
    unet_profile.save(path)
    loaded = Profile.load(path)
    assert loaded.units == unet_profile.units and loaded.timesteps == unet_profile.timesteps
    assert loaded.resnets and loaded.steps == UNET_STEPS
    for a, b in zip(loaded.change, unet_profile.change):
        assert all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b))
    with cachekern.patched(unet.model, cachekern.BlockCaching(loaded, target_compute=0.5)):
        assert torch.equal(unet_run(unet), fitted)


def test_trained_scale_shift_learns_from_the_uncached_model(unet, unet_profile, tmp_path):
    policy = dict(target_compute=0.5)
    with pytest.raises(ValueError, match="train_scale_shift"):
        cachekern.patch(unet.model, cachekern.BlockCaching(unet_profile, scale_shift="train",
                                                           **policy))
    weights = {k: v.clone() for k, v in unet.model.state_dict().items()}
    grads = [p.requires_grad for p in unet.model.parameters()]
    runs = 4
    losses = cachekern.train_scale_shift(unet_profile, unet.model,
                                         lambda: unet_run(unet, (10, 11)), runs=runs, lr=2e-2,
                                         init="identity", **policy)
    per_run = len(losses) // runs
    assert per_run > 0 and len(losses) == runs * per_run
    first, last = losses[:per_run], losses[-per_run:]
    assert [c[:2] for c in first] == [c[:2] for c in last]        # the same calls each run
    assert sum(c[2] for c in last) < 0.8 * sum(c[2] for c in first)
    # The teacher's weights are untouched, the model is unpatched and as it was.
    assert all(torch.equal(v, weights[k]) for k, v in unet.model.state_dict().items())
    assert [p.requires_grad for p in unet.model.parameters()] == grads
    assert not cachekern.patching.is_patched(unet.model)

    schedule = unet_profile.schedule(**policy)
    params = unet_profile.scale_shift_for(schedule, "train")
    assert {(u, s) for u, s, _ in params} == {(u, s) for u, row in enumerate(schedule)
                                             for s, c in enumerate(row) if not c}
    uncached = unet_run(unet, (10, 11))
    outputs = {}
    for mode in (None, "train"):
        with cachekern.patched(unet.model, cachekern.BlockCaching(unet_profile, scale_shift=mode,
                                                                   **policy)):
            outputs[mode] = unet_run(unet, (10, 11))
    assert (outputs["train"] - uncached).norm() < (outputs[None] - uncached).norm()

    unet_profile.save(tmp_path / "trained.profile")
    loaded = Profile.load(tmp_path / "trained.profile")
    with cachekern.patched(unet.model, cachekern.BlockCaching(loaded, scale_shift="train",
                                                               **policy)):
        assert torch.equal(unet_run(unet, (10, 11)), outputs["train"])
    # Several Adam steps per call: the same calls, each trained `iterations` times.
    again = cachekern.train_scale_shift(unet_profile, unet.model,
                                        lambda: unet_run(unet, (10, 11)), runs=1, lr=2e-2,
                                        iterations=2, **policy)
    assert [c[:2] for c in again] == [c[:2] for c in first for _ in range(2)]
    with pytest.raises(ValueError, match="init"):
        cachekern.train_scale_shift(unet_profile, unet.model, lambda: unet_run(unet),
                                    init="zeros", **policy)
    with pytest.raises(ValueError, match="iterations"):
        cachekern.train_scale_shift(unet_profile, unet.model, lambda: unet_run(unet),
                                    iterations=0, **policy)
    with pytest.raises(ValueError, match="lr"):
        cachekern.train_scale_shift(unet_profile, unet.model, lambda: unet_run(unet), lr=0,
                                    **policy)


def test_mismatches_and_bad_arguments_get_clear_errors(unet, flux, unet_profile, flux_profile):
    policy = cachekern.BlockCaching(unet_profile, delta=0.3, scale_shift=None)
    with cachekern.patched(unet.model, policy):
        with pytest.raises(ValueError, match="recorded for 8 steps"):
            unet_run(unet, steps=5)                           # another step count
    with pytest.raises(ValueError, match="blocks"):
        cachekern.patch(flux.model, cachekern.BlockCaching(unet_profile, scale_shift=None))
    assert "_cachekern_patch" not in vars(flux.model)
    with pytest.raises(TypeError, match="profile"):
        cachekern.BlockCaching("unet.profile")
    with pytest.raises(ValueError, match="delta"):
        cachekern.BlockCaching(flux_profile, delta=-0.1)
    with pytest.raises(ValueError, match="target_compute"):
        cachekern.BlockCaching(flux_profile, target_compute=0)
    with pytest.raises(ValueError, match="scale_shift"):
        cachekern.BlockCaching(flux_profile, scale_shift="learned")
    with pytest.raises(ValueError, match="runs"):
        cachekern.profile(flux.model, lambda: flux_run(flux), runs=0)
    with pytest.raises(ValueError, match="resnets"):
        cachekern.profile(flux.model, lambda: flux_run(flux), resnets=True)


def test_a_generation_after_an_aborted_one_starts_afresh(unet, unet_profile):
    policy = cachekern.BlockCaching(unet_profile, target_compute=0.5, scale_shift=None)
    with cachekern.patched(unet.model, policy):
        expected = unet_run(unet)
    calls = [0]

    def abort(module, args, output):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt      # the user stops a generation at its third step
    with cachekern.patched(unet.model, policy) as handle:
        hook = unet.model.register_forward_hook(abort)
        with pytest.raises(KeyboardInterrupt):
            unet_run(unet)
        hook.remove()
        assert torch.equal(unet_run(unet), expected)   # no handle.reset() needed
        assert [h["step"] for h in handle.history][-UNET_STEPS:] == list(range(UNET_STEPS))
    assert "8 steps" in repr(unet_profile) and "UNet2DConditionModel" in repr(unet_profile)


def test_the_cli_names_what_is_wrong(tmp_path, capsys):
    from cachekern.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["plot-profile", str(tmp_path / "missing.profile"), "-o", str(tmp_path / "p.png")])
    assert exit_info.value.code == 2 and "profile: no file" in capsys.readouterr().err
    (tmp_path / "bad.profile").write_bytes(b"not a profile")
    with pytest.raises(SystemExit):
        main(["plot-profile", str(tmp_path / "bad.profile"), "-o", str(tmp_path / "p.png")])
    assert "not a readable cachekern profile" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--steps", "0"])
    assert "--steps: expected a positive number" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["demo", "--device", "cuda"])
        assert "no usable CUDA device" in capsys.readouterr().err


def test_plot_profile_writes_a_heatmap(flux_profile, tmp_path):
    pytest.importorskip("matplotlib")
    from cachekern.cli import main

    path = tmp_path / "flux.profile"
    flux_profile.save(path)
    assert main(["plot-profile", str(path), "-o", str(tmp_path / "p.png"),
                 "--target-compute", "0.5"]) == 0
    from PIL import Image
    width, height = Image.open(tmp_path / "p.png").size
    assert width > 300 and height > 200


@pytest.mark.parametrize("family_name", ["flux", "sd3", "wan", "cogvideox", "hunyuan_video",
                                         "pixart", "dit", "ltx_video", "mochi", "sana",
                                         "skyreels_v2", "cogview4", "qwen_image",
                                         "hunyuan_video15", "lumina2", "flux2", "chroma",
                                         "hidream", "ltx2", "bria", "longcat_image",
                                         "ovis_image", "chronoedit", "hunyuan_image",
                                         "allegro", "kandinsky5", "glm_image", "wan_vace",
                                         "qwen_image21", "hunyuan_video_framepack",
                                         "helios", "nucleus_moe_image", "wan_animate",
                                         "minimax_h3", "ace_step", "motif_video", "latte",
                                         "kandinsky6", "sana_wm_refiner", "cosmos3_omni"])
def test_every_dit_family_profiles_caches_and_restores(family_name):
    import tiny_models

    model, inputs, timestep_scale = getattr(tiny_models, family_name)()
    inp = inputs(0)

    def run():
        return tiny_models.sample_family(model, inp, timestep_scale=timestep_scale)
    uncached = run()
    prof = cachekern.profile(model, run)
    assert prof.steps == tiny_models.FAMILY_STEPS and len(prof.units) >= 2
    with cachekern.patched(model, cachekern.BlockCaching(prof, delta=0.0, scale_shift=None)):
        assert torch.equal(run(), uncached)
    cachekern.fit_scale_shift(prof, model, run, target_compute=0.5)
    with cachekern.patched(model, cachekern.BlockCaching(prof, target_compute=0.5)) as handle:
        cached = run()
        assert handle.stats()["blocks_reused"] > 0
    assert cached.isfinite().all() and not torch.equal(cached, uncached)
    assert all("forward" not in vars(m) for m in model.modules())
    assert torch.equal(run(), uncached)


@pytest.mark.parametrize("family", ["unet", "flux"])
def test_a_tiny_device_budget_spills_and_gives_bitwise_the_same_output(family, request):
    ref, prof, run = family_case(family, request)
    with cachekern.patched(ref.model, cachekern.BlockCaching(prof, target_compute=0.5,
                                                              scale_shift=None)):
        unlimited = run(ref)
    with cachekern.patched(ref.model, cachekern.BlockCaching(
            prof, target_compute=0.5, scale_shift=None, device_budget_bytes=4096)) as handle:
        spilled = run(ref)
        cache = handle.stats()["block_cache"]
    assert torch.equal(spilled, unlimited)
    assert cache["spills"] > 0 and cache["bytes_host_to_device"] > 0
    with pytest.raises(ValueError, match="device_budget_bytes"):
        cachekern.BlockCaching(prof, device_budget_bytes=-1)


# -- forecasts ------------------------------------------------------------------------------------

def lagrange(times, t):
    return [math.prod((t - tj) / (tk - tj) for j, tj in enumerate(times) if j != k)
            for k, tk in enumerate(times)]


def forecast_by_hand(ref, prof, schedule, run, order, calls_per_step, time="timestep"):
    """Block Caching with a polynomial forecast, written plainly with forward hooks: every block
    runs, and on a step the schedule reuses, its output is replaced by input + the polynomial
    through its last order + 1 computed residuals (per CFG branch; outputs where the block
    changes the shape), evaluated at the step's recorded timestep."""
    from cachekern.models.blocks import cached_units

    units = cached_units(ref.model, prof.resnets)
    times = [t if time == "timestep" else float(s) for s, t in enumerate(prof.timesteps)]
    calls, kept, handles = {}, {}, []

    def hook(index, unit):
        def replace(module, args, kwargs, result):
            call = calls[index] = calls.get(index, -1) + 1
            step, branch = divmod(call, calls_per_step)
            outs, ins = unit.io.outputs(result), unit.io.inputs(args, kwargs)
            new = []
            for k, (x, out) in enumerate(zip(ins, outs)):
                history = kept.setdefault((index, branch, k), [])
                if out is None or x is None:
                    new.append(out)
                    continue
                same = out.shape == x.shape     # else (a ResNet changing width): the output
                if schedule[index][step]:
                    history.insert(0, (times[step], out - x if same else out))
                    new.append(out)
                else:
                    use = history[:order + 1]
                    w = lagrange([t for t, _ in use], times[step])
                    forecast = sum(wk * r for wk, (_, r) in zip(w, use))
                    new.append(x + forecast if same else forecast)
            return unit.io.result(new, args, kwargs)
        return replace

    for index, unit in enumerate(units):
        handles.append(unit.module.register_forward_hook(hook(index, unit), with_kwargs=True))
    try:
        return run(ref)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("family,order,time", [("unet", 1, "timestep"), ("flux", 1, "timestep"),
                                               ("flux", 2, "timestep"), ("unet", 2, "step")])
def test_forecasts_extrapolate_each_blocks_computed_residuals(family, order, time, request):
    ref, prof, run = family_case(family, request)
    policy = cachekern.BlockCaching(prof, target_compute=0.5, scale_shift=None,
                                    forecast_order=order, forecast_time=time)
    with cachekern.patched(ref.model, policy):
        got = run(ref)
    with cachekern.patched(ref.model, cachekern.BlockCaching(prof, target_compute=0.5,
                                                              scale_shift=None)):
        reused = run(ref)
    expected = forecast_by_hand(ref, prof, policy.schedule(), run, order,
                                2 if family == "flux" else 1, time)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, reused, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("family", ["unet", "flux"])
def test_forecasting_with_delta_zero_is_bitwise_uncached_and_offload_is_bitwise(family, request):
    ref, prof, run = family_case(family, request)
    uncached = run(ref)
    with cachekern.patched(ref.model, cachekern.BlockCaching(prof, delta=0.0, scale_shift=None,
                                                              forecast_order=2)):
        assert torch.equal(run(ref), uncached)
    policy = dict(target_compute=0.5, scale_shift=None, forecast_order=1)
    with cachekern.patched(ref.model, cachekern.BlockCaching(prof, **policy)):
        unlimited = run(ref)
    with cachekern.patched(ref.model, cachekern.BlockCaching(
            prof, device_budget_bytes=4096, **policy)) as handle:
        assert torch.equal(run(ref), unlimited)
        assert handle.stats()["block_cache"]["spills"] > 0


def test_the_multi_residual_fit_recovers_a_known_combination():
    from cachekern.block_caching.fit import MultiChannelFit

    g = torch.Generator().manual_seed(2)
    weights, shift = torch.randn(2, 5, generator=g), torch.randn(5, generator=g)
    fit = MultiChannelFit()
    for _ in range(3):
        xs = [torch.randn(40, 5, generator=g) for _ in range(2)]
        fit.add(xs, xs[0] * weights[0] + xs[1] * weights[1] + shift)
    got_weights, got_shift = fit.solve()
    torch.testing.assert_close(got_weights.float(), weights, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_shift.float(), shift, rtol=0, atol=1e-6)


def test_fitted_forecasts_are_stored_used_and_saved(unet, unet_profile, tmp_path):
    policy = dict(target_compute=0.5, scale_shift="fit", forecast_order=1)
    with pytest.raises(ValueError, match="forecast_order=1"):
        cachekern.patch(unet.model, cachekern.BlockCaching(unet_profile, **policy))
    key = cachekern.fit_scale_shift(unet_profile, unet.model, lambda: unet_run(unet, (10, 11)),
                                    target_compute=0.5, forecast_order=1)
    assert key.endswith("fit-order1")
    params = unet_profile.scale_shift[key]
    assert {w.shape[0] for w, _ in params.values()} == {1, 2}   # 2 once a block computed twice
    with cachekern.patched(unet.model, cachekern.BlockCaching(unet_profile, **policy)):
        fitted = unet_run(unet)
    with cachekern.patched(unet.model, cachekern.BlockCaching(
            unet_profile, target_compute=0.5, scale_shift=None, forecast_order=1)):
        extrapolated = unet_run(unet)
    assert fitted.isfinite().all() and not torch.equal(fitted, extrapolated)
    unet_profile.save(tmp_path / "unet.profile")
    with cachekern.patched(unet.model, cachekern.BlockCaching(
            Profile.load(tmp_path / "unet.profile"), **policy)):
        assert torch.equal(unet_run(unet), fitted)


def test_forecast_arguments_are_checked(unet_profile):
    with pytest.raises(ValueError, match="forecast_order: expected 0, 1 or 2"):
        cachekern.BlockCaching(unet_profile, forecast_order=3)
    with pytest.raises(ValueError, match="forecast_time"):
        cachekern.BlockCaching(unet_profile, forecast_time="sigma")
    with pytest.raises(ValueError, match="'train' distils order-0"):
        cachekern.BlockCaching(unet_profile, scale_shift="train", forecast_order=1)
    with pytest.raises(ValueError, match="forecast_order: expected"):
        cachekern.fit_scale_shift(unet_profile, lambda: None, lambda: None, forecast_order=5)
