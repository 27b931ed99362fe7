"""TeaCache through cachekern.patch on a tiny FluxTransformer2DModel (the real diffusers class)."""

import types

import numpy as np
import pytest
import torch

import cachekern
from cachekern import TeaCache
from cachekern.teacache.coefficients import PUBLISHED

diffusers = pytest.importorskip("diffusers")

from tiny_models import call, make_inputs, tiny_flux  # noqa: E402
from tiny_models import flux_sample as sample  # noqa: E402

STEPS = 8


def lagrange(times, t):
    return [np.prod([(t - tj) / (tk - tj) for j, tj in enumerate(times) if j != k])
            for k, tk in enumerate(times)]


def published_teacache(model, inp, threshold, coefficients, steps=STEPS, forecast_order=0,
                       forecast_time="timestep", schedule=None):
    """TeaCache's FLUX algorithm as published (teacache_flux.py), written out plainly: the
    decision from block 0's norm1 in the model's dtype, means, np.poly1d, the residual of the
    image stream. With forecast_order > 0 a skipped step adds the polynomial through the last
    forecast_order + 1 computed residuals at the step's time instead; with `schedule` the steps it
    marks are computed, whatever the indicator. Returns (outputs, decisions)."""
    state = dict(cnt=0, acc=0.0, prev=None, residual=None, kept=[])
    decisions = []

    def forward(latents, t):
        hidden = model.x_embedder(latents)
        temb = model.time_text_embed(t.expand(latents.shape[0]).to(hidden.dtype) * 1000,
                                     inp["pooled"])
        enc = model.context_embedder(inp["enc"])
        rotary = model.pos_embed(torch.cat((inp["txt_ids"], inp["img_ids"]), dim=0))
        modulated = model.transformer_blocks[0].norm1(hidden.clone(), emb=temb.clone())[0]
        if state["cnt"] in (0, steps - 1):
            calc, state["acc"] = True, 0.0
        else:
            rel = ((modulated - state["prev"]).abs().mean() / state["prev"].abs().mean()).item()
            state["acc"] += np.poly1d(coefficients)(rel)
            calc = not state["acc"] < threshold
            if calc:
                state["acc"] = 0.0
        state["prev"] = modulated
        if schedule is not None:
            calc = schedule[state["cnt"]]
        state["cnt"] += 1
        decisions.append(calc)
        now = float(t) if forecast_time == "timestep" else float(state["cnt"] - 1)
        if not calc:
            kept = state["kept"][-(forecast_order + 1):]
            weights = lagrange([k[0] for k in kept], now)
            hidden = hidden + sum(w * r for w, (_, r) in zip(weights, kept)) \
                if forecast_order else hidden + state["residual"]
        else:
            original = hidden.clone()
            for block in list(model.transformer_blocks) + list(model.single_transformer_blocks):
                enc, hidden = block(hidden_states=hidden, encoder_hidden_states=enc, temb=temb,
                                    image_rotary_emb=rotary)
            state["residual"] = hidden - original
            state["kept"].append((now, state["residual"]))
        return model.proj_out(model.norm_out(hidden, temb))

    return sample(model, inp, forward, steps), decisions


def test_threshold_zero_is_bitwise_the_uncached_model_and_unpatch_restores_it():
    model, inp = tiny_flux(), make_inputs(1)
    reference = sample(model, inp)
    handle = cachekern.patch(model, TeaCache(threshold=0.0))
    assert torch.equal(sample(model, inp), reference)                               # (a)
    assert handle.stats()["skipped"] == 0 and handle.stats()["computed"] == STEPS
    cachekern.unpatch(model)
    assert "forward" not in model.__dict__ and "_cachekern_patch" not in model.__dict__
    assert torch.equal(sample(model, inp), reference)                               # (b)
    with cachekern.patched(model, TeaCache(threshold=0.0)):
        assert torch.equal(sample(model, inp), reference)
    assert torch.equal(sample(model, inp), reference)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("parity", [True, False])
def test_decisions_and_outputs_follow_the_published_algorithm(parity, device):
    model, inp = tiny_flux(device=device), make_inputs(2, device=device)
    threshold = 0.6
    expected, decisions = published_teacache(model, inp, threshold, PUBLISHED["flux"])
    assert not all(decisions), "the threshold must make the published algorithm skip"
    handle = cachekern.patch(model, TeaCache(threshold=threshold, parity=parity,
                                            num_inference_steps=STEPS))
    got = sample(model, inp)
    assert [r["computed"] for r in handle.history] == decisions                     # (c)
    if parity:
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # A skipped step is the stack's input plus the residual of the last computed step: the
    # published code's definition, which `expected` follows line for line.
    assert handle.stats()["skipped"] == decisions.count(False)


@pytest.mark.parametrize("forecast_order", [1, 2])
@pytest.mark.parametrize("forecast_time", ["timestep", "step"])
def test_forecasts_extrapolate_the_computed_residuals_in_the_samplers_time(forecast_order,
                                                                           forecast_time):
    model, inp = tiny_flux(), make_inputs(2)
    threshold, steps = 0.4, 12
    expected, decisions = published_teacache(model, inp, threshold, PUBLISHED["flux"], steps,
                                             forecast_order=forecast_order,
                                             forecast_time=forecast_time)
    # enough computed steps before a skip for the forecast's order to be used
    assert decisions.count(True) > forecast_order + 1 and not all(decisions)
    reuse, _ = published_teacache(model, inp, threshold, PUBLISHED["flux"], steps)
    assert not torch.allclose(expected, reuse, rtol=1e-3, atol=1e-3)   # forecasting changed it
    policy = TeaCache(threshold=threshold, num_inference_steps=steps,
                      forecast_order=forecast_order, forecast_time=forecast_time)
    with cachekern.patched(model, policy) as handle:
        got = sample(model, inp, steps=steps)
        assert [r["computed"] for r in handle.history] == decisions
        assert handle.stats()["bytes_held"] > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("forecast_order", [0, 1])
def test_a_static_schedule_decides_instead_of_the_indicator(forecast_order):
    model, inp = tiny_flux(), make_inputs(3)
    schedule = [True, True, False, True, False, False, True, False]
    expected, decisions = published_teacache(model, inp, 0.0, PUBLISHED["flux"], STEPS,
                                             forecast_order=forecast_order, schedule=schedule)
    policy = TeaCache(compute_steps=schedule, forecast_order=forecast_order)
    with cachekern.patched(model, policy) as handle:
        got = sample(model, inp)
        assert [r["computed"] for r in handle.history] == schedule == decisions
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    reference = sample(model, inp)
    with cachekern.patched(model, TeaCache(compute_steps=[True] * STEPS, forecast_order=1)):
        assert torch.equal(sample(model, inp), reference)


def test_the_schedule_search_meets_the_budget_and_measures_forecast_error_plainly():
    from cachekern.teacache.schedule_search import (ForecastError, greedy_schedule,
                                                    record_stack_residuals)

    model, inp = tiny_flux(), make_inputs(4)
    records = record_stack_residuals(model, lambda: sample(model, inp), runs=1)
    assert [r[2] for r in records] == list(range(STEPS))
    errors = ForecastError(records, forecast_order=1, forecast_time="timestep")
    schedule = greedy_schedule(errors, 0.5)
    assert schedule[0] and sum(schedule) == STEPS // 2
    assert schedule == cachekern.search_schedule(model, lambda: sample(model, inp), 0.5)
    # the error it minimises, computed plainly for the schedule it chose
    series = {step: (t, r) for _, _, step, t, r in records}
    plain, computed = 0.0, []
    for step, c in enumerate(schedule):
        if c:
            computed.append(step)
            continue
        used = computed[-2:]
        times = [series[s][0] for s in used]
        weights = lagrange(times, series[step][0])
        forecast = sum(w * series[s][1] for w, s in zip(weights, used))
        plain += float((forecast - series[step][1]).pow(2).sum())
    assert errors.total(schedule) == pytest.approx(plain, rel=1e-9)
    with pytest.raises(ValueError, match="target_compute"):
        cachekern.search_schedule(model, lambda: None, 0.0)
    with pytest.raises(ValueError, match="compute_steps must be None or a non-empty list"):
        TeaCache(compute_steps=[1, 0])


def test_fitted_forecasts_are_affine_exact_on_linear_series_and_used_as_given():
    from cachekern.teacache.schedule_search import ForecastError

    # residuals exactly linear in time: the fitted two-point forecast is the linear one
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    times = [1.0 - s / 8 for s in range(8)]
    records = [(0, "cond", s, t, a + t * b) for s, t in enumerate(times)]
    errors = ForecastError(records, forecast_order=1, forecast_time="timestep", fitted=True)
    schedule = [True, True, False, True, False, False, True, False]
    weights = errors.fitted_weights(schedule)
    assert weights[0] is None and weights[1] is None
    for step, w in enumerate(weights):
        if w is not None:
            assert sum(w) == pytest.approx(1.0, abs=1e-9)
    # (fp32 residuals and a tiny ridge: exact to about 1e-5)
    assert weights[2] == pytest.approx(lagrange([times[1], times[0]], times[2]), abs=1e-4)
    scale = sum(float((r * r).sum()) for *_, r in records)
    assert errors.total(schedule) <= 1e-6 * scale
    # the runtime applies given weights: the Lagrange ones reproduce forecast_order=1
    model, inp = tiny_flux(), make_inputs(5)
    step_times = torch.linspace(1.0, 0.05, STEPS).tolist()
    given, computed = [], []
    for step, c in enumerate(schedule):
        given.append(None if c else lagrange([step_times[s] for s in computed[-2:][::-1]],
                                             step_times[step]))
        if c:
            computed.append(step)
    with cachekern.patched(model, TeaCache(compute_steps=schedule, forecast_order=1)):
        expected = sample(model, inp)
    with cachekern.patched(model, TeaCache(compute_steps=schedule, forecast_order=1,
                                           forecast_weights=given)):
        torch.testing.assert_close(sample(model, inp), expected, rtol=1e-5, atol=1e-5)
    fitted = cachekern.fit_forecast(model, lambda: sample(model, inp), schedule)
    assert [w is None for w in fitted] == schedule
    with pytest.raises(ValueError, match="forecast_weights are fitted for a static schedule"):
        TeaCache(forecast_weights=given)


def test_forecasting_outputs_extrapolates_the_stacks_output():
    model, inp = tiny_flux(), make_inputs(6)
    schedule = [True, True, False, True, False, False, True, False]
    hidden_out = {}

    def keep(module, args, kwargs, output):     # the stack's output: norm_out's input
        hidden_out[len(hidden_out)] = args[0].clone()
    hook = model.norm_out.register_forward_hook(keep, with_kwargs=True)
    try:
        with cachekern.patched(model, TeaCache(compute_steps=schedule, forecast_order=1,
                                               forecast_of="output")):
            sample(model, inp)
    finally:
        hook.remove()
    times = torch.linspace(1.0, 0.05, STEPS).tolist()
    computed = []
    for step, c in enumerate(schedule):
        if c:
            computed.append(step)
            continue
        used = computed[-2:][::-1]
        w = lagrange([times[s] for s in used], times[step])
        expected = sum(wk * hidden_out[s] for wk, s in zip(w, used))
        torch.testing.assert_close(hidden_out[step], expected, rtol=1e-5, atol=1e-5)
    reference = sample(model, inp)
    with cachekern.patched(model, TeaCache(threshold=0.0, forecast_order=2,
                                           forecast_of="output")):
        assert torch.equal(sample(model, inp), reference)


def test_forecasting_that_never_skips_is_bitwise_the_uncached_model():
    model, inp = tiny_flux(), make_inputs(1)
    reference = sample(model, inp)
    with cachekern.patched(model, TeaCache(threshold=0.0, forecast_order=2)):
        assert torch.equal(sample(model, inp), reference)


def test_a_new_generation_does_not_use_the_previous_ones_state():
    model = tiny_flux()
    policy = TeaCache(threshold=0.6, num_inference_steps=STEPS)
    handle = cachekern.patch(model, policy)
    sample(model, make_inputs(3))
    second = sample(model, make_inputs(4))                                          # (d)
    handle.reset()
    fresh = sample(model, make_inputs(4))
    assert torch.equal(second, fresh)
    first_of_second = handle.history[0]
    assert first_of_second["computed"] is True and first_of_second["step"] == 0


def test_a_change_of_shape_starts_afresh():
    model = tiny_flux()
    handle = cachekern.patch(model, TeaCache(threshold=10.0, num_inference_steps=STEPS))
    sample(model, make_inputs(5, batch=2))
    before = len(handle.history)
    small = make_inputs(5, batch=1)
    sample(model, small, steps=3)
    assert handle.history[before]["computed"] is True and handle.history[before]["step"] == 0


@pytest.mark.parametrize("forecast_order", [0, 1])
def test_per_sample_decisions_do_not_depend_on_other_samples(forecast_order):
    model = tiny_flux()
    a, b = make_inputs(6), make_inputs(7)
    mixed = dict(a)
    mixed["x"] = torch.stack([b["x"][0], a["x"][1]])        # sample 0 differs, sample 1 is a's
    mixed["enc"] = torch.stack([b["enc"][0], a["enc"][1]])
    mixed["pooled"] = torch.stack([b["pooled"][0], a["pooled"][1]])
    policy = TeaCache(threshold=0.6, num_inference_steps=STEPS, decision="per_sample",
                      forecast_order=forecast_order)
    with cachekern.patched(model, policy) as handle:
        out_a = sample(model, a)
        decisions_a = [r["computed"][1] for r in handle.history]
    with cachekern.patched(model, policy) as handle:
        out_mixed = sample(model, mixed)
        decisions_mixed = [r["computed"][1] for r in handle.history]
    assert decisions_a == decisions_mixed                                           # (e)
    assert not all(decisions_a)
    torch.testing.assert_close(out_mixed[:, 1], out_a[:, 1], rtol=1e-5, atol=1e-6)
    # and sample 1 alone, with global decisions, is the same computation
    alone = {k: (v[1:] if k in ("x", "enc", "pooled") else v) for k, v in a.items()}
    with cachekern.patched(model, TeaCache(threshold=0.6, num_inference_steps=STEPS,
                                           forecast_order=forecast_order)):
        torch.testing.assert_close(sample(model, alone)[:, 0], out_a[:, 1], rtol=1e-5,
                                   atol=1e-6)


def cfg_sample(model, cond, uncond, use_context=True):
    latents = cond["x"].clone()
    outputs = []
    with torch.no_grad():
        for t in torch.linspace(1.0, 0.05, STEPS):
            if use_context:
                with model.cache_context("cond"):
                    c = call(model, cond, latents, t)
                with model.cache_context("uncond"):
                    u = call(model, uncond, latents, t)
            else:
                c, u = call(model, cond, latents, t), call(model, uncond, latents, t)
            out = u + 3.0 * (c - u)
            latents = latents - (1.0 / STEPS) * out
            outputs.append(out)
    return torch.stack(outputs)


@pytest.mark.parametrize("use_context", [True, False])
def test_cfg_branches_keep_separate_states(use_context):
    model = tiny_flux()
    cond, uncond = make_inputs(8), make_inputs(9)
    uncond["x"] = cond["x"]
    policy = TeaCache(threshold=0.6, num_inference_steps=STEPS,
                      calls_per_step=1 if use_context else 2)
    with cachekern.patched(model, policy) as handle:
        cfg_sample(model, cond, uncond, use_context)
        branches = handle.stats()["branches"]
        history = list(handle.history)
    assert branches == (["cond", "uncond"] if use_context else ["call0", "call1"])  # (f)
    by_branch = {b: [r for r in history if r["branch"] == b] for b in branches}
    for records in by_branch.values():
        assert [r["step"] for r in records] == list(range(STEPS))
    # Each branch's distances are its own: with one shared state they would mix inputs.
    assert [r["rel_l1"] for r in by_branch[branches[0]]][1:] != \
        [r["rel_l1"] for r in by_branch[branches[1]]][1:]


def test_nan_in_the_indicator_means_compute():
    model, inp = tiny_flux(), make_inputs(10)
    handle = cachekern.patch(model, TeaCache(threshold=100.0, num_inference_steps=STEPS))
    latents = inp["x"].clone()
    with torch.no_grad():
        for i, t in enumerate(torch.linspace(1.0, 0.05, 4)):
            if i == 2:
                latents[0, 0, 0] = float("nan")
            call(model, inp, latents, t)
    record = handle.history[2]
    assert record["computed"] is True and record["rel_l1"] != record["rel_l1"]


def test_pipeline_objects_are_patched_through_their_transformer():
    model = tiny_flux()
    pipe = types.SimpleNamespace(transformer=model, components={"transformer": model})
    handle = cachekern.patch(pipe, TeaCache())
    assert handle.model is model and "forward" in model.__dict__
    cachekern.unpatch(pipe)
    assert "forward" not in model.__dict__


def test_two_models_of_one_class_keep_separate_state():
    first, second = tiny_flux(0), tiny_flux(1)
    h1 = cachekern.patch(first, TeaCache(threshold=0.6, num_inference_steps=STEPS))
    sample(first, make_inputs(11))
    assert "forward" not in second.__dict__ and h1.stats()["calls"] == STEPS
    h2 = cachekern.patch(second, TeaCache(threshold=0.6, num_inference_steps=STEPS))
    sample(second, make_inputs(11))
    assert h1.stats()["calls"] == STEPS and h2.stats()["calls"] == STEPS


def test_errors_name_what_is_wrong():
    model = tiny_flux()
    with pytest.raises(TypeError, match=r"no adapter for Linear\. Supported model classes: "
                                        r".*FluxTransformer2DModel.*subclass cachekern.models"):
        cachekern.patch(torch.nn.Linear(2, 2), TeaCache())
    with pytest.raises(TypeError, match="policy must be one of TeaCache"):
        cachekern.patch(model, "teacache")
    with pytest.raises(TypeError, match="target: expected a diffusers pipeline, transformer"):
        cachekern.patch("model", TeaCache())
    double = tiny_flux().double()
    with pytest.raises(TypeError, match="parameters are float64; caching supports float32"):
        cachekern.patch(double, TeaCache())
    assert "_cachekern_patch" not in vars(double)
    cachekern.patch(model, TeaCache())
    with pytest.raises(RuntimeError, match="already patched"):
        cachekern.patch(model, TeaCache())
    cachekern.unpatch(model)
    with pytest.raises(RuntimeError, match="is not patched"):
        cachekern.unpatch(model)
    for kwargs, match in [
        (dict(threshold=-0.1), "threshold must be a finite number >= 0"),
        (dict(threshold=float("nan")), "threshold must be a finite number >= 0"),
        (dict(coefficients="flux"), "coefficients must be 'auto', None or a non-empty list"),
        (dict(coefficients=[]), "coefficients must be 'auto', None or a non-empty list"),
        (dict(warmup_steps=-1), "warmup_steps must be an int >= 0"),
        (dict(decision="batch"), "decision must be 'global' or 'per_sample'"),
        (dict(forecast_order=3), "forecast_order must be 0, 1 or 2"),
        (dict(forecast_order=True), "forecast_order must be 0, 1 or 2"),
        (dict(forecast_time="sigma"), "forecast_time must be 'timestep' or 'step'"),
        (dict(forecast_basis="newton"), "forecast_basis must be 'lagrange' or 'taylor'"),
        (dict(forecast_of="input"), "forecast_of must be 'residual' or 'output'"),
        (dict(compute_steps=[True], forecast_weights=[[1, 2, 3, 4]]),
         "forecast_weights must be a list with one entry per step"),
        (dict(forecast_order=1, forecast_of="output", cuda_graphs=True),
         "forecast_of='output' runs eagerly"),
        (dict(compute_steps=[True, False], parity=True), "compute_steps replaces the indicator"),
        (dict(max_consecutive_skips=0), "max_consecutive_skips must be None or an int >= 1"),
        (dict(parity=True, decision="per_sample"), "parity=True reproduces the published"),
    ]:
        with pytest.raises(ValueError, match=match):
            TeaCache(**kwargs)


def test_max_consecutive_skips_and_clamp():
    model, inp = tiny_flux(), make_inputs(12)
    with cachekern.patched(model, TeaCache(threshold=100.0, max_consecutive_skips=2,
                                           num_inference_steps=STEPS)) as handle:
        sample(model, inp)
        computed = [r["computed"] for r in handle.history]
    assert computed == [True, False, False, True, False, False, True, True]
    assert TeaCache(clamp=True).rescale([1.0, -5.0], 0.1) == 0.0
    assert TeaCache(clamp=False).rescale([1.0, -5.0], 0.1) == pytest.approx(-4.9)


def test_demo_runs_and_reports(tmp_path):
    import os
    import subprocess
    import sys

    # Outside the checkout (see test_build.py), and with the kernels' PyTorch path: the
    # interpreter would take minutes over the demo's tensors.
    # An empty zoo: the random-weights demo, whatever the machine has trained.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CACHEKERN_ZOO"] = str(tmp_path / "empty-zoo")
    done = subprocess.run([sys.executable, "-m", "cachekern", "demo", "--seeds", "1", "--steps",
                           "6", "--device", "cpu", "--threads", "3"], check=True,
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    out = done.stdout
    assert "random weights" in out and "steps computed" in out and "PSNR dB" in out
    assert "CPU, 3 threads, torch" in out          # what the times were measured on
    assert "Warning" not in done.stderr, done.stderr
    row = out.strip().splitlines()[-1].split()
    assert row[0] == "0" and row[2:4] == ["/", "6"] and 1 <= int(row[1]) <= 6


def test_demo_samples_flux_photos_once_it_is_trained(tmp_path):
    import os
    import subprocess
    import sys

    from cachekern import reference_models

    ref = reference_models.create("flux-photos")       # stands in for a trained one
    ref.meta["iterations"] = 0
    zoo = tmp_path / "zoo"
    reference_models.save(reference_models.model_dir("flux-photos", zoo) / reference_models.WEIGHTS,
                          ref.model, ref.conditioner, ref.meta)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CACHEKERN_ZOO"] = str(zoo)
    out = subprocess.run([sys.executable, "-m", "cachekern", "demo", "--seeds", "2", "--steps",
                          "5", "--device", "cpu", "--save", str(tmp_path / "pairs.png")],
                         check=True, capture_output=True, text=True, env=env,
                         cwd=tmp_path).stdout
    assert "flux-photos" in out and "PSNR dB" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["0"], ["1"])]
    assert [r[1] for r in rows] == ["astronaut", "chelsea"]
    assert all(r[3:5] == ["/", "5"] and 1 <= int(r[2]) <= 5 for r in rows)
    from PIL import Image
    assert Image.open(tmp_path / "pairs.png").size == (128, 128)   # 2 seeds × (uncached, cached)
