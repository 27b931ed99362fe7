"""TeaCache's contract on every supported model family, each a tiny config of the real diffusers
class: threshold 0 is the uncached model bit for bit, unpatch restores it, a high threshold
skips, generations do not share state, per-sample decisions do not leak between samples."""

import pytest
import torch

import cachekern
from cachekern import TeaCache

diffusers = pytest.importorskip("diffusers")
STEPS = 6


def flux():
    torch.manual_seed(0)
    model = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
        axes_dims_rope=[4, 6, 6]).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 16, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 5, 32, generator=g),
                    pooled_projections=torch.randn(batch, 16, generator=g),
                    img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3))
    return model, inputs, 1.0


def sd3():
    torch.manual_seed(0)
    model = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
        pooled_projection_dim=16, out_channels=4, pos_embed_max_size=16).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 7, 16, generator=g),
                    pooled_projections=torch.randn(batch, 16, generator=g))
    return model, inputs, 1000.0


def wan():
    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=3,
        rope_max_seq_len=32).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 2, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 7, 16, generator=g))
    return model, inputs, 1000.0


def cogvideox():
    torch.manual_seed(0)
    model = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        time_embed_dim=2, text_embed_dim=8, num_layers=3, sample_width=8, sample_height=8,
        sample_frames=8, patch_size=2, temporal_compression_ratio=4,
        max_text_seq_length=8).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 2, 4, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 8, 8, generator=g))
    return model, inputs, 1000.0


def hunyuan_video():
    torch.manual_seed(0)
    model = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10,
        num_layers=2, num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1,
        guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4)).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 1, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
                    pooled_projections=torch.randn(batch, 8, generator=g),
                    encoder_attention_mask=torch.ones(batch, 6),
                    guidance=torch.full((batch,), 3.5))
    return model, inputs, 1000.0


def pixart():
    torch.manual_seed(0)
    model = diffusers.PixArtTransformer2DModel(
        sample_size=8, num_layers=3, patch_size=2, attention_head_dim=8, num_attention_heads=2,
        caption_channels=16, in_channels=4, cross_attention_dim=16, out_channels=4,
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
                    added_cond_kwargs={"aspect_ratio": None, "resolution": None})
    return model, inputs, 1000.0


def dit():
    torch.manual_seed(0)
    model = diffusers.DiTTransformer2DModel(
        sample_size=8, num_layers=3, patch_size=2, attention_head_dim=8, num_attention_heads=2,
        in_channels=4, out_channels=4, num_embeds_ada_norm=10).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
                    class_labels=torch.randint(0, 10, (batch,), generator=g))
    return model, inputs, 1000.0


def ltx_video():
    torch.manual_seed(0)
    model = diffusers.LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, num_layers=3, caption_channels=16).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 2 * 4 * 4, 4, generator=g),
                    encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
                    encoder_attention_mask=torch.ones(batch, 6), num_frames=2, height=4,
                    width=4)
    return model, inputs, 1000.0


def mochi():
    torch.manual_seed(0)
    model = diffusers.MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=3,
        pooled_projection_dim=16, in_channels=4, out_channels=None, qk_norm="rms_norm",
        text_embed_dim=16, time_embed_dim=4, activation_fn="swiglu",
        max_sequence_length=16).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 2, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
                    encoder_attention_mask=torch.ones(batch, 6))
    return model, inputs, 1000.0


FAMILIES = [flux, sd3, wan, cogvideox, hunyuan_video, pixart, dit, ltx_video, mochi]


def sample(model, inp, steps=STEPS, timestep_scale=1.0):
    latents, outputs = inp["hidden_states"].clone(), []
    rest = {k: v for k, v in inp.items() if k != "hidden_states"}
    with torch.no_grad():
        for t in torch.linspace(1.0, 0.05, steps):
            timestep = t.expand(latents.shape[0]) * timestep_scale
            out = model(hidden_states=latents, timestep=timestep, return_dict=False, **rest)[0]
            latents = latents - (1.0 / steps) * out
            outputs.append(out)
    return torch.stack(outputs)


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


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_per_sample_decisions_do_not_leak(family):
    model, inputs, scale = family()
    a, b = inputs(4), inputs(5)
    mixed = {k: (torch.stack([b[k][0], a[k][1]]) if isinstance(v, torch.Tensor)
                 and k not in ("img_ids", "txt_ids") else v)
             for k, v in a.items()}  # sample 0 from b, sample 1 from a
    results = []
    for inp in (a, mixed):
        with cachekern.patched(model, policy(threshold=0.3, decision="per_sample")) as handle:
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


def test_wan_picks_the_published_e0_fit_by_model_size():
    from cachekern.adapters import WanAdapter
    from cachekern.coefficients import PUBLISHED

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
