"""TeaCache on a UNet2DConditionModel (tiny configs of the real class, SD's and SDXL's layouts),
against a plain re-implementation: the stack runs from conv_in's output to conv_norm_out's
input; a skipped step adds the cached (or forecast) stack residual to conv_in's output; the
decision watches the time embedding the blocks receive."""

import numpy as np
import pytest
import torch

import cachekern
from cachekern import TeaCache

diffusers = pytest.importorskip("diffusers")

STEPS = 8


def tiny_unet(sdxl):
    torch.manual_seed(0)
    stages = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")) if sdxl else \
        dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    return diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=9, in_channels=4,
        out_channels=4, cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4,
        **stages).eval()


def inputs(seed, size):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, size, size, generator=g), torch.randn(2, 5, 16, generator=g)


def ddim_like(model, latents, text, forward=None):
    """A deterministic loop over descending integer timesteps, the UNet called positionally as
    pipelines call it; returns every step's output."""
    forward = forward or (lambda x, t: model(x, t, encoder_hidden_states=text,
                                             return_dict=False)[0])
    outputs = []
    with torch.no_grad():
        for t in torch.linspace(999, 24, STEPS).round():
            out = forward(latents, t)
            latents = latents - 0.1 * out
            outputs.append(out)
    return torch.stack(outputs)


def lagrange(times, t):
    return [np.prod([(t - tj) / (tk - tj) for j, tj in enumerate(times) if j != k])
            for k, tk in enumerate(times)]


def plain_teacache(model, latents, text, threshold, forecast_order, schedule=None):
    """What TeaCache claims on a UNet, written out with forward hooks: the decision from the
    relative L1 change of the time embedding (raw distance, first and last steps computed, or
    `schedule`), and a skipped step's conv_norm_out input as conv_in's output plus the residual
    (up blocks' output − conv_in's output) extrapolated through the last forecast_order + 1
    computed ones in the timestep."""
    state = dict(step=0, acc=0.0, prev=None, kept=[])
    decisions = []

    def forward(x, t):
        emb = model.time_embedding(model.get_time_embed(sample=x, timestep=t))
        step = state["step"]
        if step in (0, STEPS - 1) or state["prev"] is None:
            calc, state["acc"] = True, 0.0
        else:
            rel = float((emb - state["prev"]).abs().sum() / state["prev"].abs().sum())
            state["acc"] += rel
            calc = not state["acc"] < threshold
            if calc:
                state["acc"] = 0.0
        state["prev"] = emb
        if schedule is not None:
            calc = schedule[step] or step == 0
        state["step"] += 1
        decisions.append(calc)
        if calc:
            seen = {}
            hooks = [model.conv_in.register_forward_hook(
                         lambda m, a, out: seen.__setitem__("x", out)),
                     model.conv_norm_out.register_forward_pre_hook(
                         lambda m, a: seen.__setitem__("y", a[0]))]
            try:
                out = model(x, t, encoder_hidden_states=text, return_dict=False)[0]
            finally:
                for hook in hooks:
                    hook.remove()
            state["kept"].append((float(t), seen["y"] - seen["x"]))
            return out
        hidden = model.conv_in(x)
        kept = state["kept"][-(forecast_order + 1):]
        weights = lagrange([k[0] for k in kept], float(t))
        hidden = hidden + sum(w * r for w, (_, r) in zip(weights, kept))
        return model.conv_out(model.conv_act(model.conv_norm_out(hidden)))

    return ddim_like(model, latents, text, forward), decisions


@pytest.mark.parametrize("size", [8, 9], ids=["even", "odd"])
@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
@pytest.mark.parametrize("forecast_order", [0, 1, 2])
def test_skips_and_forecasts_follow_a_plain_reimplementation(forecast_order, sdxl, size):
    model = tiny_unet(sdxl)
    latents, text = inputs(1, size)
    threshold = 1.2
    expected, decisions = plain_teacache(model, latents, text, threshold, forecast_order)
    assert 2 < decisions.count(True) < STEPS
    policy = TeaCache(threshold=threshold, coefficients=None, num_inference_steps=STEPS,
                      forecast_order=forecast_order)
    with cachekern.patched(model, policy) as handle:
        got = ddim_like(model, latents, text)
        assert [r["computed"] for r in handle.history] == decisions
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_static_schedule_and_never_skipping():
    model = tiny_unet(sdxl=False)
    latents, text = inputs(2, 9)
    reference = ddim_like(model, latents, text)
    with cachekern.patched(model, TeaCache(compute_steps=[True] * STEPS, forecast_order=1)):
        assert torch.equal(ddim_like(model, latents, text), reference)
    assert torch.equal(ddim_like(model, latents, text), reference)
    schedule = [True, True, False, True, False, False, True, False]
    expected, _ = plain_teacache(model, latents, text, 0.0, 1, schedule=schedule)
    with cachekern.patched(model, TeaCache(compute_steps=schedule, forecast_order=1)) as handle:
        got = ddim_like(model, latents, text)
        assert [r["computed"] for r in handle.history] == schedule
        assert handle.history[3]["timestep"] == float(torch.linspace(999, 24, STEPS).round()[3])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_controlnet_residuals_run_uncached():
    model = tiny_unet(sdxl=False)
    latents, text = inputs(3, 8)
    t = torch.tensor(500.0)
    with torch.no_grad():
        down = model(latents, t, encoder_hidden_states=text, return_dict=False)
        skips = [torch.full((2, 8, 8, 8), 0.1), torch.full((2, 8, 8, 8), 0.1),
                 torch.full((2, 8, 4, 4), 0.1), torch.full((2, 16, 4, 4), 0.1)]
        mid = torch.full((2, 16, 4, 4), 0.2)
        expected = model(latents, t, encoder_hidden_states=text,
                         down_block_additional_residuals=skips,
                         mid_block_additional_residual=mid, return_dict=False)[0]
        with cachekern.patched(model, TeaCache(threshold=10.0, coefficients=None)) as handle:
            got = model(latents, t, encoder_hidden_states=text,
                        down_block_additional_residuals=skips,
                        mid_block_additional_residual=mid, return_dict=False)[0]
            assert handle.stats()["uncached_calls"] == 1
    assert torch.equal(got, expected) and not torch.equal(got, down[0])
