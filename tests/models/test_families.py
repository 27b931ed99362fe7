"""TeaCache's contract on every supported model family, each a tiny config of the real diffusers
class: threshold 0 is the uncached model bit for bit, unpatch restores it, a high threshold
skips, generations do not share state, per-sample decisions do not leak between samples."""

import pytest
import torch

import cachekern
from cachekern import TeaCache

diffusers = pytest.importorskip("diffusers")

from tiny_models import FAMILIES, FAMILY_STEPS as STEPS  # noqa: E402
from tiny_models import (cogvideox, dit, flux, hunyuan_video, ltx_video, mochi,  # noqa: E402,F401
                         pixart, sana, sd3, unet, wan)
from tiny_models import sample_family as sample  # noqa: E402


def policy(**kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("coefficients", None)      # raw distance: the same rule for every family
    return TeaCache(**kwargs)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_threshold_zero_is_bitwise_and_unpatch_restores(family):
    model, inputs, scale = family()
    inp = inputs(1)
    reference = sample(model, inp, timestep_scale=scale)
    with cachekern.patched(model, policy(threshold=0.0)) as handle:
        assert torch.equal(sample(model, inp, timestep_scale=scale), reference)
        assert handle.stats()["skipped"] == 0
    assert torch.equal(sample(model, inp, timestep_scale=scale), reference)


@pytest.mark.parametrize("parity", [False, True], ids=["fused", "parity"])
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_high_threshold_skips_and_generations_do_not_share_state(family, parity):
    model, inputs, scale = family()
    with cachekern.patched(model, policy(threshold=10.0, parity=parity)) as handle:
        sample(model, inputs(2), timestep_scale=scale)
        computed = [r["computed"] for r in handle.history]
        second = sample(model, inputs(3), timestep_scale=scale)
        handle.reset()
        fresh = sample(model, inputs(3), timestep_scale=scale)
    assert computed == [True] + [False] * (STEPS - 2) + [True]
    assert torch.equal(second, fresh)


# The UNet's and HiDream's time embeddings move far more per step (about 0.7 relative L1 on
# these six steps).
PER_SAMPLE_THRESHOLD = {"unet": 1.5, "hidream": 1.5}


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_per_sample_decisions_do_not_leak(family):
    model, inputs, scale = family()
    a, b = inputs(4), inputs(5)
    mixed = {k: (torch.stack([b[k][0], a[k][1]]) if isinstance(v, torch.Tensor)
                 and k not in ("img_ids", "txt_ids", "text_rope_pos") else v)
             for k, v in a.items()}  # sample 0 from b, sample 1 from a
    results = []
    threshold = PER_SAMPLE_THRESHOLD.get(family.__name__, 0.3)
    for inp in (a, mixed):
        with cachekern.patched(model, policy(threshold=threshold,
                                             decision="per_sample")) as handle:
            out = sample(model, inp, timestep_scale=scale)
            results.append((out[:, 1], [r["computed"][1] for r in handle.history]))
    assert results[0][1] == results[1][1] and not all(results[0][1])
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)


def test_families_without_published_coefficients_fall_back_to_the_raw_distance():
    model, inputs, _ = sd3()
    with pytest.warns(UserWarning, match="no published coefficients for 'sd3'"):
        handle = cachekern.patch(model, TeaCache(threshold=0.1))
    assert handle.runtime.polynomial is None
    cachekern.unpatch(model)


def test_calls_the_stack_cannot_serve_run_uncached():
    model, inputs, _ = sd3()
    inp = inputs(6)
    with torch.no_grad():
        expected = model(timestep=torch.tensor([500.0, 500.0]), skip_layers=[1],
                         return_dict=False, **inp)[0]
        with cachekern.patched(model, policy(threshold=10.0)) as handle:
            got = model(timestep=torch.tensor([500.0, 500.0]), skip_layers=[1],
                        return_dict=False, **inp)[0]
            assert handle.stats()["uncached_calls"] == 1 and handle.stats()["calls"] == 0
    assert torch.equal(got, expected)


def test_sana_calls_with_controlnet_residuals_run_uncached():
    model, inputs, _ = sana()
    inp = inputs(6)
    residuals = tuple(torch.randn(2, 64, 16) for _ in range(2))
    with torch.no_grad():
        expected = model(timestep=torch.tensor([500.0, 500.0]),
                         controlnet_block_samples=residuals, return_dict=False, **inp)[0]
        with cachekern.patched(model, policy(threshold=10.0)) as handle:
            got = model(timestep=torch.tensor([500.0, 500.0]),
                        controlnet_block_samples=residuals, return_dict=False, **inp)[0]
            assert handle.stats()["uncached_calls"] == 1 and handle.stats()["calls"] == 0
    assert torch.equal(got, expected)


def test_wan_picks_the_published_e0_fit_by_model_size():
    from cachekern.models import WanAdapter
    from cachekern.teacache.coefficients import PUBLISHED

    model, _, _ = wan()
    assert WanAdapter().coefficient_key(model) == "wan"      # hidden 16: no published fit
    model.register_to_config(num_attention_heads=12, attention_head_dim=128)
    assert WanAdapter().coefficient_key(model) == "wan_t2v_1.3b_e0"
    assert TeaCache().polynomial_for("wan_t2v_1.3b_e0") == PUBLISHED["wan_t2v_1.3b_e0"]


REUSES_MODULATED = [flux, sd3, hunyuan_video]


@pytest.mark.parametrize("family", REUSES_MODULATED, ids=lambda f: f.__name__)
def test_reuse_modulated_serves_block_0s_norm1_and_stays_close(family):
    model, inputs, scale = family()
    inp = inputs(1)
    reference = sample(model, inp, timestep_scale=scale)
    calls = []
    model.transformer_blocks[0].norm1.register_forward_hook(lambda *_: calls.append(1))
    with cachekern.patched(model, policy(threshold=0.0, reuse_modulated=True)) as handle:
        reused = sample(model, inp, timestep_scale=scale)
        assert handle.stats()["skipped"] == 0
    assert calls == []          # block 0's own norm1 never ran: the kernel's m served it
    # fp32: the fused m and the model's norm1 differ only in rounding.
    torch.testing.assert_close(reused, reference, rtol=1e-4, atol=1e-5)
    assert torch.equal(sample(model, inp, timestep_scale=scale), reference)


@pytest.mark.parametrize("family", [wan, pixart, ltx_video], ids=lambda f: f.__name__)
def test_reuse_modulated_is_refused_where_block_0_has_no_plain_adaln_zero(family):
    model, _, _ = family()
    with pytest.raises(ValueError, match="reuse_modulated=True needs block 0"):
        cachekern.patch(model, policy(reuse_modulated=True))
    assert "_cachekern_patch" not in model.__dict__


def test_reuse_modulated_and_parity_exclude_each_other():
    with pytest.raises(ValueError, match="parity=True .* reuse_modulated=True"):
        TeaCache(parity=True, reuse_modulated=True)
    with pytest.raises(ValueError, match="reuse_modulated must be True or False"):
        TeaCache(reuse_modulated="yes")


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_the_fused_indicator_is_block_0s_own_modulated_input(family):
    """What the fused kernel modulates (the adapter's scale, shift, norm and eps) is what block 0
    computes, as its reference_modulated_input reproduces it; an embedding indicator is one of
    block 0's own arguments."""
    from cachekern import kernels
    from cachekern.models import adapter_for

    model, inputs, scale = family()
    adapter = adapter_for(model)
    blocks = adapter.model_blocks(model)
    seen = []
    hook = blocks[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
    try:
        sample(model, inputs(7), steps=2, timestep_scale=scale)
    finally:
        hook.remove()
    if family.__name__ in ("unet", "hidream"):
        return      # their indicator is the time embedding, read outside the blocks
    call = adapter.stack_call(*seen[-1])
    with torch.no_grad():
        indicator = adapter.indicator(blocks, call)
        reference = adapter.reference_modulated_input(blocks, call)
        if indicator.embedding is not None:
            assert torch.equal(indicator.embedding, reference)
            return
        fused = kernels.modulate(call.hidden.contiguous(), indicator.scale, indicator.shift,
                                 norm=indicator.norm, eps=indicator.eps)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


def test_flux2_runs_its_single_blocks_inside_the_stack_and_restores_its_modules():
    from tiny_models import flux2

    model, inputs, _ = flux2()
    inp = inputs(8)
    modulation = model.single_stream_modulation
    with torch.no_grad():
        t = torch.tensor([0.5, 0.5])
        expected = model(timestep=t, kv_cache_mode="extract", return_dict=False, **inp)
        with cachekern.patched(model, policy(threshold=10.0)) as handle:
            sample(model, inp)
            assert model.single_stream_modulation is modulation      # the recorder is gone
            got = model(timestep=t, kv_cache_mode="extract", return_dict=False, **inp)
            assert handle.stats()["uncached_calls"] == 1
    assert torch.equal(got[0], expected[0])


def test_hidream_non_square_latents_run_the_stack_with_the_models_masks():
    """Non-square latents make HiDream pad its tokens and mask them (the stack extends the
    mask over the text tokens for its single blocks, as the model's loop does): threshold 0 is
    the uncached model bit for bit, and a skipped step still serves the padded tokens."""
    from tiny_models import hidream

    model, inputs, scale = hidream()
    inp = inputs(9)
    inp["hidden_states"] = inp["hidden_states"][..., :4]          # 8 × 4 latents
    reference = sample(model, inp, timestep_scale=scale)
    with cachekern.patched(model, policy(threshold=0.0)) as handle:
        assert torch.equal(sample(model, inp, timestep_scale=scale), reference)
    with cachekern.patched(model, policy(threshold=10.0)) as handle:
        skipped = sample(model, inp, timestep_scale=scale)
        assert handle.stats()["skipped"] == STEPS - 2
    assert skipped.shape == reference.shape and torch.isfinite(skipped).all()


def test_ltx2_skipped_steps_serve_both_streams_as_a_plain_reuse_does():
    """LTX-2's blocks carry video and audio tokens and the model decodes both: a skipped step
    adds each stream's residual from the last computed step (the stack packs the two), checked
    against a plain re-implementation (hooks that replace the block loop's output by block 0's
    inputs plus the residuals kept), with both streams sampled."""
    from tiny_models import ltx2

    model, inputs, scale = ltx2()
    compute = [True, False, True, False, False, True]
    inp = inputs(11)
    rest = {k: v for k, v in inp.items() if k not in ("hidden_states", "audio_hidden_states")}

    def run():
        video, audio, outs = inp["hidden_states"], inp["audio_hidden_states"], []
        with torch.no_grad():
            for t in torch.linspace(1.0, 0.05, STEPS):
                v, a = model(hidden_states=video, audio_hidden_states=audio,
                             timestep=(t * scale).expand(2), return_dict=False, **rest)
                video, audio = video - v / STEPS, audio - a / STEPS
                outs.append((v, a))
        return outs

    state = dict(step=-1)

    def before(module, args, kwargs):
        state["step"] += 1
        state["inputs"] = (kwargs["hidden_states"], kwargs["audio_hidden_states"])

    def after(module, args, kwargs, output):
        if compute[state["step"]]:
            state["residual"] = tuple(o - i for o, i in zip(output, state["inputs"]))
            return output
        return tuple(i + r for i, r in zip(state["inputs"], state["residual"]))
    hooks = [model.transformer_blocks[0].register_forward_pre_hook(before, with_kwargs=True),
             model.transformer_blocks[-1].register_forward_hook(after, with_kwargs=True)]
    expected = run()
    for hook in hooks:
        hook.remove()
    with cachekern.patched(model, TeaCache(compute_steps=compute)) as handle:
        got = run()
        assert [r["computed"] for r in handle.history] == compute
    for (video, audio), (want_video, want_audio) in zip(got, expected):
        torch.testing.assert_close(video, want_video, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(audio, want_audio, rtol=1e-5, atol=1e-6)
    assert not torch.equal(got[1][1], expected[0][1])     # the audio did move


def test_lumina2_takes_teacache4lumina2s_published_polynomial_without_a_warning():
    """TeaCache4Lumina2 watches layer 0's norm1 output on the joint sequence, the indicator
    this family computes, so "auto" is its published fit rather than the raw distance."""
    import warnings

    from cachekern.teacache.coefficients import PUBLISHED
    from tiny_models import lumina2

    model, _, _ = lumina2()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        handle = cachekern.patch(model, TeaCache(threshold=0.3))
    assert handle.runtime.polynomial == PUBLISHED["lumina2"]
    assert PUBLISHED["lumina2"] == [393.76566581, -603.50993606, 209.10239044, -23.00726601,
                                    0.86377344]
    cachekern.unpatch(model)


def test_hidream_watches_the_timestep_embedding_as_teacache4hidream_does():
    """HiDream's indicator is t_embedder's output (before the pooled text is added): the
    relative L1 change the handle records is that of a hook's copies of it, computed plainly,
    and "auto" is the published HiDream-I1-Full polynomial."""
    import warnings

    from cachekern.teacache.coefficients import PUBLISHED
    from tiny_models import hidream

    model, inputs, scale = hidream()
    seen = []
    hook = model.t_embedder.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    with cachekern.patched(model, policy(threshold=0.0)) as handle:
        sample(model, inputs(12), timestep_scale=scale)
        rels = [r["rel_l1"] for r in handle.history]
    hook.remove()
    assert len(seen) == STEPS
    plain = [((seen[s] - seen[s - 1]).abs().mean() / seen[s - 1].abs().mean()).item()
             for s in range(1, STEPS)]
    assert rels[1:] == pytest.approx(plain, rel=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        handle = cachekern.patch(model, TeaCache(threshold=0.3))
    assert handle.runtime.polynomial == PUBLISHED["hidream"]
    cachekern.unpatch(model)


def test_glm_image_kv_caches_prefill_read_and_stay_idle():
    """GLM-Image with condition images, as its pipeline runs it: a prefill call writes each
    block's KV cache at timestep 0, then every step reads them. The prefill is no step: both
    methods run it uncached and do not count it. TeaCache runs the reading calls uncached (the
    stack cannot hand each block its cache); Block Caching caches them block by block, equal
    to the unpatched run where it reuses nothing. Idle caches (text to image) are cached."""
    from diffusers.models.transformers.transformer_glm_image import GlmImageKVCache

    from tiny_models import glm_image

    model, inputs, scale = glm_image()
    condition, inp = inputs(3), inputs(4)

    def edit():
        caches = GlmImageKVCache(model.config.num_layers)
        caches.set_mode("write")
        with torch.no_grad():
            model(**condition, timestep=torch.zeros(2), kv_caches=caches, return_dict=False)
        caches.set_mode("read")
        return sample(model, dict(inp, kv_caches=caches), timestep_scale=scale)

    reference = edit()
    with cachekern.patched(model, policy(threshold=10.0)) as handle:
        assert torch.equal(edit(), reference)
        stats = handle.stats()
    assert stats["uncached_calls"] == STEPS + 1 and stats["skipped"] == 0
    with cachekern.patched(model, policy(threshold=10.0)) as handle:
        idle = GlmImageKVCache(model.config.num_layers)
        sample(model, dict(inp, kv_caches=idle), timestep_scale=scale)
        assert handle.stats()["skipped"] == STEPS - 2 and handle.stats()["uncached_calls"] == 0
    prof = cachekern.profile(model, edit)
    assert prof.steps == STEPS                  # the prefill is not counted
    with cachekern.patched(model, cachekern.BlockCaching(prof, delta=0.0,
                                                         scale_shift=None)) as handle:
        assert torch.equal(edit(), reference)
    with cachekern.patched(model, cachekern.BlockCaching(prof, target_compute=0.5,
                                                         scale_shift=None)) as handle:
        edit()
        stats = handle.stats()
    assert stats["uncached_calls"] == 1 and stats["blocks_reused"] > 0
    assert stats["calls"] == STEPS
