"""How a patched model behaves where users trip: gradients enabled, warnings that must point at
the user's line, and the step count TeaCache needs to force the last step (issue 18)."""

import types
import warnings

import pytest
import torch

import cachekern
from cachekern import TeaCache

diffusers = pytest.importorskip("diffusers")

import tiny_models  # noqa: E402
from tiny_models import call, make_inputs, tiny_flux  # noqa: E402

STEPS = 6


def grad_call(model, inp):
    """One call with gradients, as a training script makes it; (output, input-gradient)."""
    latents = inp["x"].clone().requires_grad_(True)
    out = call(model, inp, latents, torch.tensor(0.7))
    out.square().mean().backward()
    return out.detach(), latents.grad


def block_caching_policy(model, inp):
    def run():
        return tiny_models.flux_sample(model, inp, steps=STEPS)
    prof = cachekern.profile(model, run)
    return cachekern.BlockCaching(prof, target_compute=0.5, scale_shift=None)


@pytest.mark.parametrize("method", ["teacache", "blockcaching"])
def test_gradients_are_computed_uncached_and_said_once(method):
    model, inp = tiny_flux(), make_inputs(0)
    expected_out, expected_grad = grad_call(model, inp)
    model.zero_grad()
    grad_call(model, inp)
    expected_param_grad = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    policy = TeaCache(threshold=10.0, num_inference_steps=STEPS) if method == "teacache" \
        else block_caching_policy(model, inp)
    with cachekern.patched(model, policy) as handle:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outs = [grad_call(model, inp) for _ in range(3)]
        said = [w for w in caught if "gradients are enabled" in str(w.message)]
        # the line that called the model (tiny_models.call), not one inside cachekern or torch
        assert len(said) == 1 and said[0].filename == tiny_models.__file__
        assert "torch.no_grad()" in str(said[0].message)
        assert handle.stats()["uncached_calls"] == 3
        for out, grad in outs:   # every call computed, with gradients to inputs and weights
            assert torch.equal(out, expected_out)
            torch.testing.assert_close(grad, expected_grad)
        torch.testing.assert_close([p.grad / 3 for p in model.parameters()], expected_param_grad)
        # under no_grad the same handle caches as before
        with torch.no_grad():
            tiny_models.flux_sample(model, inp, steps=STEPS)
        served = handle.stats()["skipped"] if method == "teacache" else \
            handle.stats()["blocks_reused"]
        assert served > 0


def test_warnings_point_at_the_users_line():
    model, _, _ = tiny_models.wan()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cachekern.patch(model, TeaCache())           # no published coefficients for this case
    said = [w for w in caught if "no published coefficients" in str(w.message)]
    assert said and all(w.filename == __file__ for w in said)
    cachekern.unpatch(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with cachekern.patched(model, TeaCache()):   # entered through contextlib
            pass
    said = [w for w in caught if "no published coefficients" in str(w.message)]
    assert said and all(w.filename == __file__ for w in said)


def run_steps(model, inp, steps):
    with torch.no_grad():
        for t in torch.linspace(1.0, 0.05, steps):
            call(model, inp, inp["x"], t)


def test_a_patched_pipeline_gives_its_step_count_so_the_last_step_computes():
    from diffusers import FlowMatchEulerDiscreteScheduler

    model, inp = tiny_flux(), make_inputs(0)
    scheduler = FlowMatchEulerDiscreteScheduler()
    pipe = types.SimpleNamespace(transformer=model, components={"transformer": model},
                                 scheduler=scheduler)
    with cachekern.patched(pipe, TeaCache(threshold=10.0)) as handle:
        for steps in (STEPS, STEPS + 3):              # a second call with another step count
            scheduler.set_timesteps(steps)            # as the pipeline does before its loop
            handle.reset()
            run_steps(model, inp, steps)
            computed = [r["computed"] for r in handle.history]
            assert computed == [True] + [False] * (steps - 2) + [True], computed


def test_a_bare_model_without_a_step_count_says_the_last_step_cannot_be_forced():
    model, inp = tiny_flux(), make_inputs(0)
    with cachekern.patched(model, TeaCache(threshold=10.0)) as handle:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_steps(model, inp, STEPS)
        said = [w for w in caught if "step count is unknown" in str(w.message)]
        assert len(said) == 1 and said[0].filename == tiny_models.__file__
        assert [r["computed"] for r in handle.history][-1] is False     # as the warning says
    with pytest.raises(ValueError, match="parity=True.* num_inference_steps"):
        cachekern.patch(model, TeaCache(parity=True))
    assert not any("forward" in vars(m) for m in model.modules())       # nothing left patched
    with cachekern.patched(model, TeaCache(parity=True, num_inference_steps=STEPS)):
        pass
