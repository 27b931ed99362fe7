"""cachekern.tune on a tiny FluxTransformer2DModel: the setting it picks meets its target when
measured again on the evaluation seeds, min_psnr is honoured with the fastest such setting, the
saved result loads back for the same model only, and bad targets get clear errors."""

import math

import pytest
import torch

import cachekern
from cachekern.metrics import psnr

diffusers = pytest.importorskip("diffusers")

from tiny_models import flux_sample, make_inputs, tiny_flux  # noqa: E402

STEPS = 8


@pytest.fixture(scope="module")
def model():
    return tiny_flux()


def run_of(model):
    """run(seed): one generation, as a user makes it; the final latents."""
    def run(seed):
        inp = make_inputs(seed)
        return inp["x"] - flux_sample(model, inp, steps=STEPS).sum(0) / STEPS
    return run


@pytest.fixture(scope="module")
def tuned(model):
    return cachekern.tune(model, run_of(model), speedup=2.0, evaluation_seeds=(1, 2),
                          calibration_seeds=(7,), progress=False)


def test_the_chosen_setting_meets_the_speedup_when_measured_again(model, tuned):
    assert tuned.compute <= 0.5 and tuned.speedup >= 2.0
    assert tuned.uncached_generations == 4        # two evaluation seeds, one calibration seed x2
    run = run_of(model)
    with torch.no_grad():
        references = {seed: run(seed) for seed in (1, 2)}
    with cachekern.patched(model, tuned.policy) as handle:
        scores = []
        for seed, reference in references.items():
            handle.reset()
            scores.append(psnr(reference.float(), run(seed).float()))
        stats = handle.stats()
    assert stats["samples_computed"] / (stats["samples_computed"] + stats["samples_skipped"]) \
        == pytest.approx(tuned.compute)
    assert sum(scores) / 2 == pytest.approx(tuned.psnr, rel=1e-9)
    # the best of what it tried within the budget, static and online forecasts among them
    within = [r for r in tuned.table if r["compute"] <= 0.5]
    assert tuned.psnr == max(r["psnr"] for r in within)
    assert {r["kind"] for r in tuned.table} == {"static", "online"}
    assert math.isfinite(tuned.psnr) and 0 < tuned.ssim <= 1 or math.isnan(tuned.ssim)


def test_min_psnr_picks_the_fastest_setting_that_reaches_it(model, tuned):
    goal = sorted(r["psnr"] for r in tuned.table)[len(tuned.table) // 2]
    result = cachekern.tune(model, run_of(model), min_psnr=goal, evaluation_seeds=(1, 2),
                            calibration_seeds=(7,), progress=False)
    assert result.psnr >= goal
    # the fastest of those that reach it (a setting that never skips is no answer)
    assert result.compute == min(r["compute"] for r in result.table
                                 if r["psnr"] >= goal and r["compute"] < 1)
    with pytest.raises(ValueError, match="min_psnr: no candidate reaches 1000.0 dB; the "
                                         "closest was"):
        cachekern.tune(model, run_of(model), min_psnr=1000.0, evaluation_seeds=(1,),
                       calibration_seeds=(7,), progress=False)


def test_save_and_load_round_trip_and_check_the_model(model, tuned, tmp_path):
    path = tmp_path / "tuned.cachekern"
    tuned.save(path)
    policy = cachekern.load_tuned(path, model, num_inference_steps=STEPS)
    assert policy == tuned.policy
    other = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
        axes_dims_rope=[4, 6, 6])
    with pytest.raises(ValueError, match="target: tuned for a FluxTransformer2DModel with 3 "
                                         "blocks, got a FluxTransformer2DModel with 4"):
        cachekern.load_tuned(path, other)
    with pytest.raises(ValueError, match="num_inference_steps: tuned for 8 steps, got 28"):
        cachekern.load_tuned(path, model, num_inference_steps=28)
    (tmp_path / "bad").write_text("{}")
    with pytest.raises(ValueError, match="is not a cachekern.tune result"):
        cachekern.load_tuned(tmp_path / "bad", model)
    pytest.importorskip("matplotlib")
    tuned.plot(tmp_path / "tune.png")
    assert (tmp_path / "tune.png").stat().st_size > 1000


def test_bad_targets_and_arguments_get_clear_errors(model):
    run = run_of(model)
    for kwargs, match in [
        (dict(), "exactly one of speedup"),
        (dict(speedup=2.0, min_psnr=30.0), "exactly one of speedup"),
        (dict(speedup=0.5), "speedup: expected a number > 1"),
        (dict(speedup=True), "speedup: expected a number > 1"),
        (dict(min_psnr=-3.0), "min_psnr: expected a positive number"),
        (dict(speedup=2.0, evaluation_seeds=()), "evaluation_seeds: expected a non-empty"),
        (dict(speedup=2.0, evaluation_seeds=(7,), calibration_seeds=(7,)),
         "evaluation_seeds: must differ from calibration_seeds"),
    ]:
        with pytest.raises(ValueError, match=match):
            cachekern.tune(model, run, progress=False, **kwargs)
    with pytest.raises(TypeError, match="run: expected run\\(seed\\) to return the generated"):
        cachekern.tune(model, lambda seed: "image", speedup=2.0, progress=False)
    with cachekern.patched(model, cachekern.TeaCache()):
        with pytest.raises(RuntimeError, match="tune: the model is patched"):
            cachekern.tune(model, run, speedup=2.0, progress=False)
    with pytest.raises(ValueError, match="speedup: no candidate reaches 50.00x"):
        cachekern.tune(model, run, speedup=50.0, evaluation_seeds=(1,), calibration_seeds=(7,),
                       progress=False)


def test_the_command_line_checks_its_arguments(capsys):
    from cachekern.cli import main

    for argv, message in [
        (["tune", "--speedup", "2", "-o", "x"], "--reference-model"),
        (["tune", "--reference-model", "pixart-scenes", "-o", "x"], "one of the arguments"),
        (["tune", "--reference-model", "nope", "--speedup", "2", "-o", "x"], "invalid choice"),
        (["tune", "--reference-model", "pixart-scenes", "--speedup", "2", "--min-psnr", "30",
          "-o", "x"], "not allowed with"),
    ]:
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err
