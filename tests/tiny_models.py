"""Tiny configs of the real diffusers classes, and the sampling loops the tests run them in: one
builder per family, shared by every test folder (tests import this module, never each other)."""

import inspect

import torch

import diffusers

FAMILY_STEPS = 6


def tiny_flux(seed=0, device="cpu"):
    torch.manual_seed(seed)
    return diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
        axes_dims_rope=[4, 6, 6]).eval().to(device)


def make_inputs(seed, batch=2, tokens=16, text=5, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    inputs = dict(x=torch.randn(batch, tokens, 8, generator=g),
                  enc=torch.randn(batch, text, 32, generator=g),
                  pooled=torch.randn(batch, 16, generator=g),
                  img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(text, 3))
    return {k: v.to(device) for k, v in inputs.items()}


def call(model, inp, latents, t):
    return model(hidden_states=latents, encoder_hidden_states=inp["enc"],
                 pooled_projections=inp["pooled"], timestep=t.expand(latents.shape[0]),
                 img_ids=inp["img_ids"], txt_ids=inp["txt_ids"], return_dict=False)[0]


def flux_sample(model, inp, forward=None, steps=8):
    """A flow-matching Euler loop on tiny_flux; returns every step's model output."""
    forward = forward or (lambda latents, t: call(model, inp, latents, t))
    latents, outputs = inp["x"].clone(), []
    with torch.no_grad():
        for t in torch.linspace(1.0, 0.05, steps, device=latents.device):
            out = forward(latents, t)
            latents = latents - (1.0 / steps) * out
            outputs.append(out)
    return torch.stack(outputs)


# -- one builder per family: (model, inputs(seed, batch=2), timestep scale) ---------------------
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


def _wan_like(cls):
    """Wan's tiny config for cls (Wan, SkyReels-V2, ChronoEdit: the same constructor and call)."""
    torch.manual_seed(0)
    model = cls(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=3,
                rope_max_seq_len=32).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 2, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 7, 16, generator=g))
    return model, inputs, 1000.0


def wan():
    return _wan_like(diffusers.WanTransformer3DModel)


def chronoedit():
    return _wan_like(diffusers.ChronoEditTransformer3DModel)


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


def hunyuan_image():
    torch.manual_seed(0)
    model = diffusers.HunyuanImageTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=(1, 1), text_embed_dim=16,
        rope_axes_dim=(4, 4)).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
                    encoder_attention_mask=torch.ones(batch, 6))
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


def allegro():
    torch.manual_seed(0)
    model = diffusers.AllegroTransformer3DModel(
        patch_size=2, patch_size_t=1, num_attention_heads=2, attention_head_dim=8, in_channels=4,
        out_channels=4, num_layers=3, cross_attention_dim=16, caption_channels=12,
        sample_height=8, sample_width=8, sample_frames=3).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 3, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 5, 12, generator=g))
    return model, inputs, 1000.0


def kandinsky5():
    torch.manual_seed(0)
    model = diffusers.Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=12, in_text_dim2=6, time_dim=8, out_visual_dim=4,
        patch_size=(1, 2, 2), model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=3,
        axes_dims=(2, 2, 4)).eval()
    with torch.no_grad():       # its modulations start at zero: every block the identity
        for name, p in model.named_parameters():
            if "modulation" in name:
                p.normal_(0.0, 0.3)

    def inputs(seed, batch=2):
        # Latents channels last, as its pipeline makes them; the rope positions are not batched.
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 3, 8, 8, 4, generator=g),
                    encoder_hidden_states=torch.randn(batch, 5, 12, generator=g),
                    pooled_projections=torch.randn(batch, 6, generator=g),
                    visual_rope_pos=[torch.arange(3), torch.arange(4), torch.arange(4)],
                    text_rope_pos=torch.arange(5))
    return model, inputs, 1000.0


def glm_image():
    torch.manual_seed(0)
    model = diffusers.GlmImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=8,
        num_attention_heads=2, text_embed_dim=12, time_embed_dim=8, condition_dim=4,
        prior_vq_quantizer_codebook_size=32).eval()

    def inputs(seed, batch=2):
        # The prior tokens (one per latent patch) come from GLM-Image's autoregressive stage.
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 5, 12, generator=g),
                    prior_token_id=torch.randint(0, 32, (batch, 16), generator=g),
                    prior_token_drop=torch.zeros(batch, 16, dtype=torch.bool),
                    target_size=torch.full((batch, 2), 64.0),
                    crop_coords=torch.zeros(batch, 2))
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


def sana():
    torch.manual_seed(0)
    model = diffusers.SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
        num_layers=3, num_cross_attention_heads=2, cross_attention_head_dim=8,
        cross_attention_dim=16, caption_channels=16, mlp_ratio=2.0, sample_size=8,
        patch_size=1, norm_elementwise_affine=False).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 6, 16, generator=g))
    return model, inputs, 1000.0


def skyreels_v2():
    return _wan_like(diffusers.SkyReelsV2Transformer3DModel)


def unet():
    # SDXL's layout (no cross-attention in the first stage) on a 9×9 latent, whose odd size
    # makes the forward pass the skips' sizes to the upsampler.
    torch.manual_seed(0)
    model = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=9, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        norm_num_groups=4, attention_head_dim=4).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(sample=torch.randn(batch, 4, 9, 9, generator=g),
                    encoder_hidden_states=torch.randn(batch, 5, 16, generator=g))
    return model, inputs, 1000.0


def cogview4():
    torch.manual_seed(0)
    model = diffusers.CogView4Transformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, text_embed_dim=16, time_embed_dim=16, condition_dim=4,
        pos_embed_max_size=16, sample_size=8, rope_axes_dim=(4, 4)).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        sizes = torch.tensor([[16.0, 16.0]] * batch)
        return dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
                    original_size=sizes, target_size=sizes, crop_coords=sizes * 0)
    return model, inputs, 1000.0


def qwen_image():
    torch.manual_seed(0)
    model = diffusers.QwenImageTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(2, 2, 4)).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 16, 4, generator=g),
                    encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
                    encoder_hidden_states_mask=torch.ones(batch, 6),
                    img_shapes=[(1, 4, 4)] * batch)
    return model, inputs, 1.0


def hunyuan_video15():
    torch.manual_seed(0)
    model = diffusers.HunyuanVideo15Transformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
        num_layers=2, num_refiner_layers=1, text_embed_dim=16, text_embed_2_dim=8,
        image_embed_dim=8, rope_axes_dim=(2, 2, 4), task_type="t2v").eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 1, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
                    encoder_attention_mask=torch.ones(batch, 6),
                    encoder_hidden_states_2=torch.randn(batch, 3, 8, generator=g),
                    encoder_attention_mask_2=torch.ones(batch, 3),
                    image_embeds=torch.zeros(batch, 1, 8))
    return model, inputs, 1000.0


def lumina2():
    torch.manual_seed(0)
    model = diffusers.Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=16, num_layers=2,
        num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1, multiple_of=16,
        axes_dim_rope=(2, 2, 4), axes_lens=(32, 32, 32), cap_feat_dim=16).eval()
    with torch.no_grad():      # the norms' weights start at one: make them matter
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm1.norm" in name:
                p.uniform_(0.5, 1.5)

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
                    encoder_attention_mask=torch.ones(batch, 6, dtype=torch.bool))
    return model, inputs, 1.0


def flux2():
    torch.manual_seed(0)
    model = diffusers.Flux2Transformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, timestep_guidance_channels=8,
        axes_dims_rope=(2, 2, 2, 2), guidance_embeds=False).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        img_ids = torch.stack(torch.meshgrid(torch.arange(1), torch.arange(4), torch.arange(4),
                                             torch.arange(1), indexing="ij"), -1).reshape(-1, 4)
        return dict(hidden_states=torch.randn(batch, 16, 4, generator=g),
                    encoder_hidden_states=torch.randn(batch, 5, 16, generator=g),
                    img_ids=img_ids.float(), txt_ids=torch.zeros(5, 4))
    return model, inputs, 1.0


def chroma():
    return _flux_like(diffusers.ChromaTransformer2DModel, timestep_scale=1.0,
                      approximator_num_channels=8, approximator_hidden_dim=16,
                      approximator_layers=1)


def hidream():
    torch.manual_seed(0)
    model = diffusers.HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, caption_channels=[8, 6], text_emb_dim=8, num_routed_experts=2,
        num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(16, 16),
        llama_layers=[0, 1, 2, 3]).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        # Llama's states a layer each (the model indexes them by llama_layers), as a list so
        # that dim 0 of every tensor input is the batch.
        return dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
                    encoder_hidden_states_t5=torch.randn(batch, 5, 8, generator=g),
                    encoder_hidden_states_llama3=list(torch.randn(4, batch, 3, 6, generator=g)),
                    pooled_embeds=torch.randn(batch, 8, generator=g))
    return model, inputs, 1000.0


def ltx2():
    torch.manual_seed(0)
    model = diffusers.LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4,
        audio_num_attention_heads=2, audio_attention_head_dim=4, audio_cross_attention_dim=8,
        num_layers=2, caption_channels=12, use_prompt_adaln_single=False).eval()

    def inputs(seed, batch=2):
        # The video latents are the sampled ones; the audio latents stay as given (the test
        # of both streams, tests/models/test_families.py, samples them too).
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 2 * 4 * 4, 4, generator=g),
                    audio_hidden_states=torch.randn(batch, 5, 4, generator=g),
                    encoder_hidden_states=torch.randn(batch, 7, 12, generator=g),
                    audio_encoder_hidden_states=torch.randn(batch, 7, 12, generator=g),
                    num_frames=2, height=4, width=4, audio_num_frames=5)
    return model, inputs, 1000.0


def _flux_like(cls, timestep_scale=1000.0, **config):
    """A tiny model of a class with FLUX's blocks and call (Chroma, Bria, LongCat-Image,
    Ovis-Image)."""
    torch.manual_seed(0)
    model = cls(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2,
                attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                axes_dims_rope=(2, 2, 4), **config).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 16, 4, generator=g),
                    encoder_hidden_states=torch.randn(batch, 5, 16, generator=g),
                    img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3))
    return model, inputs, timestep_scale


def bria():
    return _flux_like(diffusers.BriaTransformer2DModel)


def longcat_image():
    return _flux_like(diffusers.LongCatImageTransformer2DModel, pooled_projection_dim=16)


def ovis_image():
    return _flux_like(diffusers.OvisImageTransformer2DModel, out_channels=4)


FAMILIES = [flux, sd3, wan, cogvideox, hunyuan_video, pixart, dit, ltx_video, mochi, sana,
            skyreels_v2, unet, cogview4, qwen_image, hunyuan_video15, lumina2, flux2, chroma,
            hidream, ltx2, bria, longcat_image, ovis_image, chronoedit, hunyuan_image, allegro,
            kandinsky5, glm_image]


def sample_family(model, inp, steps=FAMILY_STEPS, timestep_scale=1.0):
    """A flow-matching Euler loop over a family's inputs; returns every step's model output. A
    UNet (inputs with a `sample`) is called as pipelines call it: unet(latents, t, ...)."""
    name = "sample" if "sample" in inp else "hidden_states"
    latents, outputs = inp[name].clone(), []
    rest = {k: v for k, v in inp.items() if k != name}
    with torch.no_grad():
        for t in torch.linspace(1.0, 0.05, steps, device=latents.device):
            timestep = t.expand(latents.shape[0]) * timestep_scale
            if name == "sample":
                out = model(latents, timestep, return_dict=False, **rest)
            elif "timesteps" in inspect.signature(model.forward).parameters:   # HiDream
                out = model(hidden_states=latents, timesteps=timestep, return_dict=False,
                            **rest)
            else:
                out = model(hidden_states=latents, timestep=timestep, return_dict=False,
                            **rest)
            if isinstance(out, (tuple, list)):      # Kandinsky 5 returns the tensor itself
                out = out[0]
            latents = latents - (1.0 / steps) * out
            outputs.append(out)
    return torch.stack(outputs)


def on_device(family, device):
    """A family builder's (model, inputs, scale) with the model and every input on `device`."""
    model, inputs, scale = family()

    def move(v):            # HiDream's Llama states are a list of tensors
        if isinstance(v, (list, tuple)):
            return type(v)(move(x) for x in v)
        return v.to(device) if isinstance(v, torch.Tensor) else v

    def moved(seed, batch=2):
        return {name: move(v) for name, v in inputs(seed, batch).items()}
    return model.to(device), moved, scale
