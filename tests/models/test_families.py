"""TeaCache's contract on every supported model family, each a tiny config of the real diffusers
class: threshold 0 is the uncached model bit for bit, unpatch restores it, a high threshold
skips, generations do not share state, per-sample decisions do not leak between samples."""

import pytest
import torch

import cachekern
from cachekern import TeaCache

diffusers = pytest.importorskip("diffusers")

from tiny_models import FAMILIES, FAMILY_STEPS as STEPS, UNBATCHED  # noqa: E402
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
    if family.__name__ in UNBATCHED:
        pytest.skip("one packed sequence a call: no samples to split")
    model, inputs, scale = family()
    a, b = inputs(4), inputs(5)
    # Sample 0 from b, sample 1 from a, in every argument with a batch dimension.
    mixed = {k: (torch.stack([b[k][0], a[k][1]]) if _batched(k, v) else v)
             for k, v in a.items()}
    results = []
    threshold = PER_SAMPLE_THRESHOLD.get(family.__name__, 0.3)
    for inp in (a, mixed):
        with cachekern.patched(model, policy(threshold=threshold,
                                             decision="per_sample")) as handle:
            out = sample(model, inp, timestep_scale=scale)
            results.append((out[:, 1], [r["computed"][1] for r in handle.history]))
    assert results[0][1] == results[1][1] and not all(results[0][1])
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)


def _batched(key, value):
    """Whether a family input carries the batch dimension (not the shared layouts: ids, rotary
    positions, FramePack's frame indices, MiniMax-H3's rows)."""
    return isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == 2 and \
        key not in ("img_ids", "txt_ids", "text_rope_pos") and \
        not (key.startswith("indices_") and value.dim() == 1)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_mixed_per_sample_decisions_run_each_sample_as_alone(family, monkeypatch):
    """Per-sample decisions forced to differ between the samples (after the first step, sample
    b computes when step + b is even; every sample the last step): each sample's outputs are
    those of a batch of that sample alone under its own decisions (a plain re-implementation),
    so a sub-batch carries every per-sample argument (rotary tables included)."""
    if family.__name__ in UNBATCHED:
        pytest.skip("one packed sequence a call: no samples to split")
    from cachekern.teacache.runtime import TeaCacheRuntime

    decide, first = TeaCacheRuntime.decide, [0]

    def forced(self, state, values, has_sums, timestep, batch, num_steps):
        record = decide(self, state, values, has_sums, timestep, batch, num_steps)
        step = record["step"]
        if 0 < step < STEPS - 1:
            record["compute"] = [(step + first[0] + b) % 2 == 0 for b in range(batch)]
        return record
    monkeypatch.setattr(TeaCacheRuntime, "decide", forced)
    model, inputs, scale = family()
    inp = inputs(6)
    if family.__name__ == "hidream":     # said at the first split
        with cachekern.patched(model, policy(threshold=10.0, decision="per_sample")):
            with pytest.raises(ValueError, match="per_sample' cannot split"):
                sample(model, inp, timestep_scale=scale)
        return
    with cachekern.patched(model, policy(threshold=10.0, decision="per_sample")) as handle:
        both = sample(model, inp, timestep_scale=scale)
        assert [r["computed"] for r in handle.history][1:3] == [[False, True], [True, False]]
    if family.__name__ == "minimax_h3":      # its forward takes no one-sample slice of these
        return                               # inputs (the row layout is the batch's)
    for b in (0, 1):
        first[0] = b
        alone = {k: v[b:b + 1] if _batched(k, v) else
                 tuple(t[b:b + 1] for t in v) if isinstance(v, tuple) and v and
                 all(_batched(k, t) for t in v) else v
                 for k, v in inp.items()}
        with cachekern.patched(model, policy(threshold=10.0, decision="per_sample")):
            one = sample(model, alone, timestep_scale=scale)
        torch.testing.assert_close(both[:, b:b + 1], one, rtol=1e-4, atol=1e-5)


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
    from cachekern.models.graphable import forward_arguments

    model, inputs, scale = family()
    adapter = adapter_for(model)
    blocks = adapter.model_blocks(model)
    seen, forward = [], []
    hooks = [blocks[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args, kwargs)), with_kwargs=True),
        model.register_forward_pre_hook(
            lambda module, args, kwargs: forward.append((args, kwargs)), with_kwargs=True)]
    try:
        sample(model, inputs(7), steps=2, timestep_scale=scale)
    finally:
        for hook in hooks:
            hook.remove()
    if family.__name__ in ("unet", "hidream"):
        return      # their indicator is the time embedding, read outside the blocks
    call = adapter.with_forward_inputs(
        adapter.stack_call(*seen[-1]),
        forward_arguments(model, *forward[-1], adapter.forward_inputs))
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


def _wan_stack_ends(model):
    """Hooks recording, per call of a Wan-like model, the patch embedding's output (the stack's
    input, read as tokens once the model is done adding to it in place, as Wan Animate adds
    the pose) and what the output norm receives (the stack's output, after every hint or
    face adapter): (inputs, outputs, hooks)."""
    ins, outs = [], []
    hooks = [model.patch_embedding.register_forward_hook(lambda m, a, o: ins.append(o)),
             model.norm_out.register_forward_pre_hook(lambda m, a: outs.append(a[0]))]
    return ins, outs, hooks


def _assert_exact_at_zero_and_skips_when_high(model, inp, scale):
    """Threshold 0 is the uncached model bit for bit, a high threshold skips every step but the
    first and the last, and unpatching restores the model."""
    reference = sample(model, inp, timestep_scale=scale)
    with cachekern.patched(model, policy(threshold=0.0)):
        assert torch.equal(sample(model, inp, timestep_scale=scale), reference)
    with cachekern.patched(model, policy(threshold=10.0)) as handle:
        sample(model, inp, timestep_scale=scale)
        assert handle.stats()["skipped"] == STEPS - 2
    assert torch.equal(sample(model, inp, timestep_scale=scale), reference)


def _assert_skips_add_step_0s_residual(ins, outs, cached_ins, cached_outs,
                                       tokens=lambda embedded: embedded.flatten(2).transpose(1, 2)):
    """Step 0 (computed) is the uncached one bit for bit; each skipped step's stack output is
    its own input plus step 0's stack residual (a plain re-implementation of a skip). `tokens`
    lays an input out as the stack's output (Wan's: the patch embedding's map as tokens)."""
    assert torch.equal(cached_outs[0], outs[0])
    residual = outs[0] - tokens(ins[0])
    for step in range(1, STEPS - 1):
        torch.testing.assert_close(cached_outs[step], tokens(cached_ins[step]) + residual,
                                   rtol=1e-6, atol=1e-6)


def test_wan_vace_runs_its_vace_blocks_inside_the_stack_with_the_callers_scales():
    """WanVACE: with control scales passed (positionally, as the last tensor argument, and by
    keyword), threshold 0 is the uncached model bit for bit; a skipped step runs neither Wan's
    blocks nor the VACE blocks, and gives the step's input plus the last computed step's
    stack residual (a plain re-implementation: the residual read off the unpatched blocks)."""
    from tiny_models import wan_vace

    model, inputs, scale = wan_vace()
    inp = dict(inputs(9), control_hidden_states_scale=torch.tensor([0.6, 1.7]))
    reference = sample(model, inp, timestep_scale=scale)
    unscaled = sample(model, dict(inp, control_hidden_states_scale=None), timestep_scale=scale)
    assert not torch.allclose(reference, unscaled)      # the scales reach the output
    with cachekern.patched(model, policy(threshold=0.0)):
        assert torch.equal(sample(model, inp, timestep_scale=scale), reference)
        t = torch.full((2,), 500.0)
        with torch.no_grad():
            positional = model(inp["hidden_states"], t, inp["encoder_hidden_states"], None,
                               inp["control_hidden_states"], inp["control_hidden_states_scale"],
                               return_dict=False)[0]
    with torch.no_grad():
        expected = model(inp["hidden_states"], t, inp["encoder_hidden_states"], None,
                         inp["control_hidden_states"], inp["control_hidden_states_scale"],
                         return_dict=False)[0]
    assert torch.equal(positional, expected)

    ins, outs, hooks = _wan_stack_ends(model)
    sample(model, inp, timestep_scale=scale)
    for h in hooks:
        h.remove()
    cached_ins, cached_outs, hooks = _wan_stack_ends(model)
    ran = []
    hooks += [b.register_forward_hook(lambda *_: ran.append(1))
              for b in list(model.blocks) + list(model.vace_blocks)]
    with cachekern.patched(model, policy(threshold=10.0)) as handle:
        sample(model, inp, timestep_scale=scale)
        computed = [r["computed"] for r in handle.history]
    for h in hooks:
        h.remove()
    assert computed == [True] + [False] * (STEPS - 2) + [True]
    assert len(ran) == 2 * (len(model.blocks) + len(model.vace_blocks))  # steps 0 and 5 only
    _assert_skips_add_step_0s_residual(ins, outs, cached_ins, cached_outs)


def test_qwen_image21_with_its_kv_cache_caches_the_target_tokens():
    """Qwen-Image 2.1 as its pipeline runs it with the KV cache: step 0 prefills every block's
    cache from the whole sequence, later steps carry the target image's tokens only. Threshold
    0 is the uncached run bit for bit; a high threshold skips the middle steps, and a skipped
    step's image tokens are its input plus step 0's residual over the image tokens (a plain
    re-implementation, read off the unpatched blocks); Block Caching caches it block by block,
    equal to the unpatched run where it reuses nothing."""
    from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21KVCache

    from tiny_models import qwen_image21

    model, inputs, _ = qwen_image21()
    inp = inputs(11)

    def run():
        cache = QwenImage21KVCache(len(model.transformer_blocks))
        latents, outputs = inp["hidden_states"].clone(), []
        with torch.no_grad():
            for i, t in enumerate(torch.linspace(1.0, 0.05, STEPS)):
                out = model(**dict(inp, hidden_states=latents), timestep=t.expand(2),
                            kv_cache=cache, kv_cache_mode="extract" if i == 0 else "cached",
                            return_dict=False)[0][:, -latents.shape[1]:]
                latents = latents - out / STEPS
                outputs.append(out)
        return torch.stack(outputs)

    def stack_ends():
        ins, outs = [], []
        hooks = [model.transformer_blocks[0].register_forward_pre_hook(
                     lambda m, a, k: ins.append(k["hidden_states"][:, -16:]), with_kwargs=True),
                 model.norm_out.register_forward_pre_hook(lambda m, a: outs.append(a[0][:, -16:]))]
        return ins, outs, hooks

    ins, outs, hooks = stack_ends()
    reference = run()
    for h in hooks:
        h.remove()
    with cachekern.patched(model, policy(threshold=0.0)):
        assert torch.equal(run(), reference)
    _, cached_outs, hooks = stack_ends()
    embedded = []
    hooks.append(model.img_in.register_forward_hook(lambda m, a, o: embedded.append(o)))
    with cachekern.patched(model, policy(threshold=10.0)) as handle:
        run()
        computed = [r["computed"] for r in handle.history]
    for h in hooks:
        h.remove()
    assert computed == [True] + [False] * (STEPS - 2) + [True]
    assert torch.equal(cached_outs[0], outs[0])
    residual = outs[0] - ins[0]
    for step in range(1, STEPS - 1):
        torch.testing.assert_close(cached_outs[step], embedded[step] + residual,
                                   rtol=1e-6, atol=1e-6)
    prof = cachekern.profile(model, run)
    with cachekern.patched(model, cachekern.BlockCaching(prof, delta=0.0, scale_shift=None)):
        assert torch.equal(run(), reference)
    with cachekern.patched(model, cachekern.BlockCaching(prof, target_compute=0.5,
                                                         scale_shift=None)) as handle:
        cached = run()
        assert handle.stats()["blocks_reused"] > 0
    assert cached.isfinite().all()
    # Per-sample decisions split a call only where its samples decide apart: one cache holds
    # the whole batch, so such a split is refused, naming the way out.
    from cachekern.models import adapter_for
    from cachekern.models.base import StackCall

    split = StackCall(torch.randn(2, 16, 16), dict(kv_cache=QwenImage21KVCache(2),
                                                   modulation=torch.randn(3, 64)))
    with pytest.raises(ValueError, match="per_sample' cannot split .* use_kv_cache=False"):
        adapter_for(model).select(split, torch.tensor([1]))


def test_wan_animate_runs_its_face_adapters_inside_the_stack():
    """Wan Animate: a skipped step runs neither Wan's blocks nor the face adapters, and gives
    the step's input plus the last computed step's stack residual (read off the unpatched
    model, face adapters included); the face encoder still runs on every call."""
    from tiny_models import wan_animate

    model, inputs, scale = wan_animate()
    inp = inputs(12)

    ins, outs, hooks = _wan_stack_ends(model)
    sample(model, inp, timestep_scale=scale)
    for h in hooks:
        h.remove()
    cached_ins, cached_outs, hooks = _wan_stack_ends(model)
    ran, encoded = [], []
    hooks += [m.register_forward_hook(lambda *_: ran.append(1))
              for m in list(model.blocks) + list(model.face_adapter)]
    hooks.append(model.face_encoder.register_forward_hook(lambda *_: encoded.append(1)))
    with cachekern.patched(model, policy(threshold=10.0)) as handle:
        sample(model, inp, timestep_scale=scale)
        computed = [r["computed"] for r in handle.history]
    for h in hooks:
        h.remove()
    assert computed == [True] + [False] * (STEPS - 2) + [True]
    assert len(ran) == 2 * (len(model.blocks) + len(model.face_adapter)) and len(encoded) == STEPS
    _assert_skips_add_step_0s_residual(ins, outs, cached_ins, cached_outs)


def test_ace_step_gives_the_sliding_window_mask_to_its_sliding_layers_only():
    """ACE-Step with a full-attention layer first (so the model hands the stack no mask): the
    stack builds the sliding window's mask as the model does, and threshold 0 is the uncached
    model bit for bit; the same where a sliding layer comes first."""
    from tiny_models import ace_step

    for layers in (["full_attention", "sliding_attention", "sliding_attention"], None):
        model, inputs, scale = ace_step(layers)
        inp = inputs(13)
        reference = sample(model, inp, timestep_scale=scale)
        with cachekern.patched(model, policy(threshold=0.0)) as handle:
            assert torch.equal(sample(model, inp, timestep_scale=scale), reference)
            assert handle.stats()["skipped"] == 0


def test_ace_step_skipped_calls_hand_norm_out_the_layout_computed_ones_do():
    """ACE-Step's layers return a transposed view (its channels strided), and its RMSNorm gives
    other bits over a contiguous copy: a skipped call's output takes the blocks' strides, as
    the graphed path's does, so that eager and graphed calls agree bit for bit."""
    from tiny_models import ace_step

    model, inputs, scale = ace_step()
    strides = []
    hook = model.norm_out.register_forward_pre_hook(lambda m, args: strides.append(
        args[0].stride()))
    try:
        uncached = sample(model, inputs(6), timestep_scale=scale)
        assert strides[0][-1] != 1          # the layout this test is about
        strides.clear()
        with cachekern.patched(model, policy(threshold=10.0)) as handle:
            cached = sample(model, inputs(6), timestep_scale=scale)
            assert [r["computed"] for r in handle.history] == \
                [True] + [False] * (STEPS - 2) + [True]
    finally:
        hook.remove()
    assert len(set(strides)) == 1 and strides[0][-1] != 1
    assert torch.equal(cached[0], uncached[0])


def test_motif_video_without_decoder_layers_and_with_two():
    """Motif-Video's decoder layers (the family builder has one) run inside the stack;
    without any, or with two, threshold 0 is still the uncached model bit for bit, and a high
    threshold skips."""
    from tiny_models import motif_video

    for decoders in (0, 2):
        model, inputs, scale = motif_video(decoders)
        inp = inputs(14)
        _assert_exact_at_zero_and_skips_when_high(model, inp, scale)


def test_latte_without_temporal_attention_and_with_one_frame():
    """Latte's stack runs its (spatial, temporal) pairs with the model's reshapes: with
    enable_temporal_attentions=False (spatial blocks only) and on a one-frame video (no
    frame positions added), threshold 0 is the uncached model bit for bit and a high threshold
    skips; a skipped call's output is the kept residual on the stack's input."""
    from tiny_models import latte

    model, inputs, scale = latte()
    for temporal, frames in ((False, 3), (True, 1)):
        inp = inputs(15)
        inp["hidden_states"] = inp["hidden_states"][:, :, :frames].contiguous()
        inp["enable_temporal_attentions"] = temporal
        _assert_exact_at_zero_and_skips_when_high(model, inp, scale)

    # Three frames with temporal attention: a skipped step's stack output (norm_out's input) is
    # its input (pos_embed's output) plus step 0's stack residual, and no block runs.
    inp = inputs(16)

    def stack_ends():
        ins, outs = [], []
        return ins, outs, [model.pos_embed.register_forward_hook(lambda m, a, o: ins.append(o)),
                           model.norm_out.register_forward_pre_hook(
                               lambda m, a: outs.append(a[0]))]
    ins, outs, hooks = stack_ends()
    sample(model, inp, timestep_scale=scale)
    cached_ins, cached_outs, more = stack_ends()
    ran = []
    hooks += more + [b.register_forward_hook(lambda *_: ran.append(1))
                     for b in list(model.transformer_blocks) +
                     list(model.temporal_transformer_blocks)]
    with cachekern.patched(model, policy(threshold=10.0)):
        sample(model, inp, timestep_scale=scale)
    for h in hooks:
        h.remove()
    assert len(ran) == 2 * 4          # steps 0 and 5, two pairs of blocks
    _assert_skips_add_step_0s_residual(ins, outs, cached_ins, cached_outs, tokens=lambda x: x)


def test_kandinsky6_serves_video_and_audio_from_one_packed_residual():
    """Kandinsky 6 with audio: threshold 0 gives both outputs of the uncached model bit for
    bit; a skipped step runs no fused block and gives each stream its input plus step 0's
    residual of that stream (a plain re-implementation: the residuals read off the unpatched
    blocks). Video alone (no audio_hidden_states) caches the video tokens as they are."""
    from tiny_models import kandinsky6

    model, inputs, _ = kandinsky6()
    inp = inputs(17)
    t = [torch.full((2,), v) for v in (900.0, 800.0, 700.0)]

    def run():
        with torch.no_grad():
            return [model(timestep=step, return_dict=False, **inp) for step in t]

    blocks = model.visual_transformer_blocks

    def stack_ends():
        ins, outs = [], []
        return ins, outs, [
            blocks[0].register_forward_pre_hook(lambda m, a: ins.append(a[:2])),
            blocks[-1].register_forward_hook(lambda m, a, o: outs.append(o))]
    reference = run()
    ins, outs, hooks = stack_ends()
    run()
    for h in hooks:
        h.remove()
    with cachekern.patched(model, policy(threshold=0.0, num_inference_steps=3)):
        for got, want in zip(run(), reference):
            assert all(torch.equal(g, w) for g, w in zip(got, want))
    ran = []
    hooks = [b.register_forward_hook(lambda *_: ran.append(1)) for b in blocks]
    with cachekern.patched(model, policy(threshold=10.0, num_inference_steps=4)):
        cached = run()
    for h in hooks:
        h.remove()
    assert len(ran) == len(blocks)               # step 0 only; steps 1 and 2 skipped
    assert all(torch.equal(g, w) for g, w in zip(cached[0], reference[0]))
    for stream in (0, 1):
        assert not torch.equal(cached[1][stream], reference[1][stream])
    # The skipped steps' outputs through the model's own output layers, from input + residual.
    (video0, audio0), (video_out0, audio_out0) = ins[0], outs[0]
    for step in (1, 2):
        video, audio = ins[step]
        served = (video + (video_out0 - video0), audio + (audio_out0 - audio0))
        with torch.no_grad():
            temb_v = model.video_time_embeddings(t[step]) + \
                model.video_pooled_text_embeddings(inp["pooled_projections"])
            temb_a = model.audio_time_embeddings(t[step]) + \
                model.audio_pooled_text_embeddings(inp["pooled_projections"])
            expected_video = model.out_layer(served[0].reshape(2, 3, 4, 4, -1), temb_v)
            expected_audio = model.audio_out_layer(served[1], temb_a)
        torch.testing.assert_close(cached[step][0], expected_video, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cached[step][1], expected_audio, rtol=1e-5, atol=1e-5)

    model, inputs, _ = kandinsky6(audio=False)
    inp = inputs(18)
    reference = run()
    with cachekern.patched(model, policy(threshold=0.0, num_inference_steps=3)):
        assert all(torch.equal(g[0], w[0]) for g, w in zip(run(), reference))


def test_sana_wm_refiner_caches_the_denoising_steps_of_a_kv_cached_window():
    """SANA-WM's refiner as its pipeline runs a window: a call seeds the cache's sink, the
    denoising steps read it, a last call appends the refined window to the history. The cache
    writing calls are no steps (uncached, not counted) for either method; with threshold 0 (or
    a Block Caching schedule that computes everything) outputs and the cache's history are the
    uncached ones bit for bit; a high threshold skips every step but the first and the last;
    per-sample decisions cannot split the cache and say so."""
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMRefinerKVCache

    from tiny_models import sana_wm_refiner

    model, inputs, scale = sana_wm_refiner()
    layers = len(model.transformer_blocks)

    def window(spread=1.0):
        cache = SanaWMRefinerKVCache(layers)
        sink, inp = inputs(20, frames=(0, 1)), inputs(21)
        inp["hidden_states"][1] *= spread      # samples that change at different rates
        with torch.no_grad():
            model(hidden_states=sink["hidden_states"], timestep=torch.zeros(2),
                  encoder_hidden_states=sink["encoder_hidden_states"],
                  video_rotary_emb=sink["video_rotary_emb"], kv_cache=cache,
                  kv_cache_mode="capture_pre_rope", return_dict=False)
            for i in range(layers):
                cache.get(i).store_sink(*cache.get(i).get_captured_pre_rope())
            cache.sink_pe = sink["video_rotary_emb"]
            latents, outputs = inp["hidden_states"].clone(), []
            for t in torch.linspace(1.0, 0.05, STEPS):
                out = model(hidden_states=latents, timestep=t.expand(2) * scale,
                            encoder_hidden_states=inp["encoder_hidden_states"],
                            video_rotary_emb=inp["video_rotary_emb"], kv_cache=cache,
                            kv_cache_mode="inject", return_dict=False)[0]
                latents = latents - out / STEPS
                outputs.append(out)
            model(hidden_states=latents, timestep=torch.zeros(2),
                  encoder_hidden_states=inp["encoder_hidden_states"],
                  video_rotary_emb=inp["video_rotary_emb"], kv_cache=cache,
                  kv_cache_mode="inject_and_capture_post_rope", return_dict=False)
        return torch.stack(outputs), cache.get(layers - 1).get_captured_post_rope()

    reference, history = window()
    with cachekern.patched(model, policy(threshold=0.0)) as handle:
        outputs, kept = window()
        assert handle.stats()["uncached_calls"] == 2 and handle.stats()["calls"] == STEPS
    assert torch.equal(outputs, reference)
    assert all(torch.equal(a, b) for a, b in zip(kept, history))
    with cachekern.patched(model, policy(threshold=10.0)) as handle:
        skipped, _ = window()
        assert handle.stats()["skipped"] == STEPS - 2
    assert not torch.equal(skipped, reference) and skipped.isfinite().all()
    refused = []
    for threshold in (0.1, 0.2, 0.3, 0.4):    # until the samples' decisions differ
        with cachekern.patched(model, policy(threshold=threshold, decision="per_sample")):
            try:
                window(spread=3.0)
            except ValueError as error:
                refused.append(str(error))
                break
    assert refused and "per_sample' cannot split" in refused[0] and "KV cache" in refused[0]
    prof = cachekern.profile(model, lambda: window()[0])
    assert prof.steps == STEPS
    with cachekern.patched(model, cachekern.BlockCaching(prof, delta=0.0, scale_shift=None)):
        outputs, kept = window()
    reference, history = window()
    assert torch.equal(outputs, reference)
    assert all(torch.equal(a, b) for a, b in zip(kept, history))


def test_cosmos3_omni_skips_serve_the_generated_tokens_from_one_residual():
    """Cosmos 3 Omni (one packed sequence): a skipped step runs no layer; its generated
    stream's stack output (the final norm's input) is its input plus step 0's residual (a plain
    re-implementation), and the text prefix goes to the final norm as it came (the layers
    change it on a computed step)."""
    from tiny_models import cosmos3_omni

    model, inputs, scale = cosmos3_omni()
    inp = inputs(19)

    def stack_ends():
        ins, outs = [], []
        hooks = [model.layers[0].register_forward_pre_hook(lambda m, a: ins.append(a[:2])),
                 model.norm.register_forward_pre_hook(lambda m, a: outs.append([a[0]])),
                 model.norm_moe_gen.register_forward_pre_hook(
                     lambda m, a: outs[-1].append(a[0]))]
        return ins, outs, hooks
    ins, outs, hooks = stack_ends()
    sample(model, inp, timestep_scale=scale)
    for h in hooks:
        h.remove()
    cached_outs = []
    hooks = [model.norm.register_forward_pre_hook(lambda m, a: cached_outs.append([a[0]])),
             model.norm_moe_gen.register_forward_pre_hook(
                 lambda m, a: cached_outs[-1].append(a[0]))]
    ran = []
    hooks += [layer.register_forward_hook(lambda *_: ran.append(1)) for layer in model.layers]
    with cachekern.patched(model, policy(threshold=10.0)) as handle:
        sample(model, inp, timestep_scale=scale)
        assert handle.stats()["skipped"] == STEPS - 2
    for h in hooks:
        h.remove()
    assert len(ran) == 2 * len(model.layers)
    (text0, generated0), (text_out0, generated_out0) = ins[0], outs[0]
    assert torch.equal(cached_outs[0][1], generated_out0)
    for step in range(1, STEPS - 1):
        assert torch.equal(cached_outs[step][0], text0)    # the text does not change by step
    # Step 1's input is the uncached run's too (step 0 was computed): its output is that input
    # plus step 0's residual.
    torch.testing.assert_close(cached_outs[1][1], ins[1][1] + (generated_out0 - generated0),
                               rtol=1e-6, atol=1e-6)
    assert torch.equal(ins[1][0], text0) and not torch.equal(text_out0, text0)


def test_every_diffusers_transformer_with_a_cache_mixin_has_an_adapter():
    """Issue 18's list: each model class diffusers exports with CacheMixin (its own caches'
    hook) and a block stack is one cachekern serves; ControlNets feed a model, they are none."""
    import inspect

    import diffusers
    from diffusers.models.cache_utils import CacheMixin

    from cachekern.models.registry import ADAPTERS

    classes = [name for name in dir(diffusers)
               if inspect.isclass(getattr(diffusers, name, None))
               and issubclass(getattr(diffusers, name), CacheMixin)
               and name != "CacheMixin" and "ControlNet" not in name]
    assert len(classes) >= 30          # diffusers 0.42 has 34
    assert [name for name in classes if name not in ADAPTERS] == []
