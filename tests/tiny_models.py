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


def wan_vace():
    """Wan VACE: Wan's tiny config with VACE blocks after layers 0 and 2, and a control video."""
    torch.manual_seed(0)
    model = diffusers.WanVACETransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=3,
        rope_max_seq_len=32, vace_layers=[0, 2], vace_in_channels=6).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 2, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 7, 16, generator=g),
                    control_hidden_states=torch.randn(batch, 6, 2, 8, 8, generator=g))
    return model, inputs, 1000.0


def helios():
    """Helios: Wan-like blocks; two new frames after short, mid and long history latents."""
    torch.manual_seed(0)
    model = diffusers.HeliosTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=3,
        rope_dim=(2, 2, 4)).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 2, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 7, 16, generator=g),
                    indices_hidden_states=torch.tensor([[4, 5]] * batch),
                    indices_latents_history_short=torch.tensor([[3]] * batch),
                    indices_latents_history_mid=torch.tensor([[1, 2]] * batch),
                    indices_latents_history_long=torch.tensor([[0] * 4] * batch),
                    latents_history_short=torch.randn(batch, 4, 1, 8, 8, generator=g),
                    latents_history_mid=torch.randn(batch, 4, 2, 8, 8, generator=g),
                    latents_history_long=torch.randn(batch, 4, 4, 8, 8, generator=g))
    return model, inputs, 1000.0


def wan_animate():
    """Wan Animate: four Wan blocks with a face adapter after blocks 0 and 2; pose latents one
    frame short of the video's, and a 16-pixel face video."""
    torch.manual_seed(0)
    model = diffusers.WanAnimateTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=None,
        latent_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=4,
        image_dim=None, rope_max_seq_len=32,
        motion_encoder_channel_sizes={"16": 8, "8": 8, "4": 8}, motion_encoder_size=16,
        motion_style_dim=8, motion_dim=4, motion_encoder_dim=8, face_encoder_hidden_dim=16,
        face_encoder_num_heads=2, inject_face_latents_blocks=2,
        motion_encoder_batch_size=4).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 12, 3, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 7, 16, generator=g),
                    pose_hidden_states=torch.randn(batch, 4, 2, 8, 8, generator=g),
                    face_pixel_values=torch.randn(batch, 3, 5, 16, 16, generator=g))
    return model, inputs, 1000.0


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


def latte():
    torch.manual_seed(0)
    model = diffusers.LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        num_layers=2, cross_attention_dim=16, attention_bias=True, sample_size=8, patch_size=2,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=12, video_length=3).eval()

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


def kandinsky6(audio=True):
    torch.manual_seed(0)
    model = diffusers.Kandinsky6Transformer3DModel(
        in_visual_dim=4, out_visual_dim=4, in_text_dim=12, in_text_dim2=6, time_dim=8,
        patch_size=(1, 2, 2), model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=3,
        axes_dims=(2, 2, 4), visual_cond=False, in_audio_dim=5, out_audio_dim=5, model_dim_a=8,
        time_dim_a=8, ff_dim_a=16, axes_dims_a=(2, 2, 4), ca_rope=True, cross_gates=True,
        fix_modulation=True).eval()

    def inputs(seed, batch=2):
        # Video latents channels last, as its pipeline makes them; audio [B, length, channels].
        g = torch.Generator().manual_seed(seed)
        inp = dict(hidden_states=torch.randn(batch, 3, 8, 8, 4, generator=g),
                   encoder_hidden_states=torch.randn(batch, 5, 12, generator=g),
                   pooled_projections=torch.randn(batch, 6, generator=g))
        if audio:
            inp["audio_hidden_states"] = torch.randn(batch, 7, 5, generator=g)
        return inp
    return model, inputs, 1000.0


def sana_wm_refiner():
    torch.manual_seed(0)
    model = diffusers.SanaWMLTX2RefinerTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=3,
        caption_channels=12).eval()

    def inputs(seed, batch=2, frames=(2, 3)):
        # The active window's tokens (two frames of 4 × 4) and its rotary table at their
        # absolute frame positions, as the refiner's pipeline builds them.
        g = torch.Generator().manual_seed(seed)
        rope = model.build_rotary_emb_for_absolute_positions(
            batch_size=batch, frame_positions=list(frames), height=4, width=4, device="cpu",
            fps=24.0)
        return dict(hidden_states=torch.randn(batch, 16 * len(frames), 4, generator=g),
                    encoder_hidden_states=torch.randn(batch, 5, 12, generator=g),
                    video_rotary_emb=rope)
    return model, inputs, 1000.0


def cosmos3_omni():
    torch.manual_seed(0)
    model = diffusers.Cosmos3OmniTransformer(
        head_dim=8, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=3, num_key_value_heads=1, latent_channel=4, latent_patch_size=2,
        patch_latent_dim=16, vocab_size=50, rope_axes_dim=(2, 1, 1)).eval()

    def inputs(seed, batch=1):
        # One packed sequence, as its pipeline builds it: five text tokens, then one video of
        # two frames of 4 × 4 latents (2 × 2 patches each), every frame noisy. The sampler
        # updates vision_tokens[0] and fills vision_timesteps.
        g = torch.Generator().manual_seed(seed)
        frames, text, patches = 2, 5, 4
        tokens = frames * patches
        length = text + tokens
        grid = torch.stack([torch.arange(frames).repeat_interleave(patches),
                            torch.arange(2).repeat_interleave(2).repeat(frames),
                            torch.arange(2).repeat(2 * frames)])
        positions = torch.cat([torch.arange(text).expand(3, text), grid + text], dim=1)
        return dict(input_ids=torch.randint(0, 50, (text,), generator=g),
                    text_indexes=torch.arange(text), position_ids=positions, und_len=text,
                    sequence_length=length,
                    vision_tokens=[torch.randn(1, 4, frames, 4, 4, generator=g)],
                    vision_token_shapes=[(frames, 2, 2)],
                    vision_sequence_indexes=torch.arange(text, length),
                    vision_mse_loss_indexes=torch.arange(text, length),
                    vision_noisy_frame_indexes=[torch.arange(frames)],
                    vision_timesteps=torch.zeros(tokens))
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


def _image_and_text_tokens(seed, batch=2):
    """Qwen-Image's and Nucleus-Image's call: 4x4 image tokens, six text tokens and a mask."""
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(batch, 16, 4, generator=g),
                encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
                encoder_hidden_states_mask=torch.ones(batch, 6),
                img_shapes=[(1, 4, 4)] * batch)


def qwen_image():
    torch.manual_seed(0)
    model = diffusers.QwenImageTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(2, 2, 4)).eval()

    return model, _image_and_text_tokens, 1.0


def qwen_image21():
    """Qwen-Image 2.1: six text tokens, then a 4x4 target image (its four slots in img_mask each
    standing for 2x2 tokens). The model returns the joint sequence; sample_family reads the
    image's positions, as its pipeline does."""
    torch.manual_seed(0)
    model = diffusers.QwenImage21Transformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, context_in_dim=16, axes_dims_rope=(2, 2, 4)).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 16, 4, generator=g),
                    encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
                    img_shapes=[[(1, 4, 4)]] * batch,
                    img_mask=torch.cat([torch.zeros(batch, 6, dtype=torch.bool),
                                        torch.ones(batch, 4, dtype=torch.bool)], dim=1))
    return model, inputs, 1.0


def hunyuan_video_framepack():
    """FramePack: HunyuanVideo's blocks, with an image embedding and the clean, 2x and 4x
    history latents it packs before the two new frames."""
    torch.manual_seed(0)
    model = diffusers.HunyuanVideoFramepackTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
        num_layers=1, num_single_layers=2, num_refiner_layers=1, patch_size=2,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4),
        has_image_proj=True, image_proj_dim=12, has_clean_x_embedder=True).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 2, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 5, 16, generator=g),
                    encoder_attention_mask=torch.ones(batch, 5),
                    pooled_projections=torch.randn(batch, 8, generator=g),
                    image_embeds=torch.randn(batch, 3, 12, generator=g),
                    guidance=torch.full((batch,), 6000.0),
                    indices_latents=torch.tensor([3, 4]),
                    latents_clean=torch.randn(batch, 4, 2, 8, 8, generator=g),
                    indices_latents_clean=torch.tensor([0, 5]),
                    latents_history_2x=torch.randn(batch, 4, 2, 8, 8, generator=g),
                    indices_latents_history_2x=torch.tensor([1, 2]),
                    latents_history_4x=torch.randn(batch, 4, 4, 8, 8, generator=g),
                    indices_latents_history_4x=torch.tensor([6, 7, 8, 9]))
    return model, inputs, 1000.0


def nucleus_moe_image():
    """Nucleus-Image: five blocks, the fourth with a mixture-of-experts feed-forward."""
    torch.manual_seed(0)
    model = diffusers.NucleusMoEImageTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=5, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(2, 2, 4), num_experts=4,
        moe_intermediate_dim=16, capacity_factors=2.0).eval()
    with torch.no_grad():       # diffusers leaves the experts' weights as torch.empty made them
        for name, weight in model.named_parameters():
            if name.endswith(("gate_up_proj", "down_proj")):
                weight.normal_(0.0, 0.2)

    return model, _image_and_text_tokens, 1.0


def minimax_h3():
    """MiniMax-H3: one packed sequence of 3 text, 4 video and 2 audio rows (the layout every
    sample shares); the audio rows stay as given, the video rows are sampled."""
    torch.manual_seed(0)
    model = diffusers.MiniMaxH3Transformer3DModel(
        num_attention_heads=2, attention_head_dim=16, hidden_size=16, num_layers=2,
        num_refiner_layers=1, ffn_dim=32, in_channels=4, audio_in_channels=3, text_dim=8,
        freq_dim=16, time_embed_hidden_dim=16, time_embed_dim=8, rope_freq_dim=2).eval()
    positions = torch.tensor([[i, 0, 0] for i in range(3)] +
                             [[3, h, w] for h in range(2) for w in range(2)] +
                             [[4, 0, 0], [5, 0, 0]])

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 16, generator=g),
                    audio_hidden_states=torch.randn(batch, 2, 3, generator=g),
                    encoder_hidden_states=torch.randn(batch, 3, 8, generator=g),
                    timestep_indices=torch.zeros(9, dtype=torch.long),
                    token_tags=torch.tensor([1, 1, 1, 0, 0, 0, 0, 2, 2]), position_ids=positions,
                    video_indices=torch.arange(3, 7), audio_indices=torch.tensor([7, 8]),
                    text_indices=torch.arange(3))
    return model, inputs, 1.0


def ace_step(layer_types=None):
    """ACE-Step 1.5: three layers, sliding-window and full attention in turn (by default
    the first slides), over 11 audio frames (padded to the patch) with their context."""
    torch.manual_seed(0)
    model = diffusers.AceStepTransformer1DModel(
        hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, in_channels=12, audio_acoustic_hidden_dim=4,
        patch_size=2, sliding_window=4, encoder_hidden_size=8, layer_types=layer_types).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 11, 4, generator=g),
                    context_latents=torch.randn(batch, 11, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 5, 8, generator=g),
                    timestep_r=torch.zeros(batch))
    return model, inputs, 1.0


def motif_video(decoders=1):
    """Motif-Video: one double-stream and three single-stream blocks, the last `decoders` of
    them decoder layers."""
    torch.manual_seed(0)
    model = diffusers.MotifVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
        num_layers=1, num_single_layers=3, num_decoder_layers=decoders, patch_size=2,
        text_embed_dim=16, rope_axes_dim=(2, 2, 4)).eval()

    def inputs(seed, batch=2):
        g = torch.Generator().manual_seed(seed)
        return dict(hidden_states=torch.randn(batch, 4, 2, 8, 8, generator=g),
                    encoder_hidden_states=torch.randn(batch, 5, 16, generator=g),
                    encoder_attention_mask=torch.ones(batch, 5))
    return model, inputs, 1000.0


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
            kandinsky5, glm_image, wan_vace, qwen_image21, hunyuan_video_framepack,
            helios, nucleus_moe_image, wan_animate, minimax_h3, ace_step, motif_video, latte,
            kandinsky6, sana_wm_refiner, cosmos3_omni]
# Families whose call is one packed sequence with no batch dimension (no per-sample split).
UNBATCHED = ("cosmos3_omni",)


def sample_family(model, inp, steps=FAMILY_STEPS, timestep_scale=1.0):
    """A flow-matching Euler loop over a family's inputs; returns every step's model output. A
    UNet (inputs with a `sample`) is called as pipelines call it: unet(latents, t, ...)."""
    if "vision_tokens" in inp:      # Cosmos 3 Omni: one packed sequence
        return _sample_packed(model, inp, steps, timestep_scale)
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
            out = out[:, -latents.shape[1]:]       # Qwen-Image 2.1: the text positions too
            if out.shape[1] < latents.shape[1]:    # Wan Animate: condition channels after
                latents = torch.cat([latents[:, :out.shape[1]] - (1.0 / steps) * out,
                                     latents[:, out.shape[1]:]], dim=1)
            else:
                latents = latents - (1.0 / steps) * out
            outputs.append(out)
    return torch.stack(outputs)


def _sample_packed(model, inp, steps, timestep_scale):
    """sample_family's loop for Cosmos 3 Omni: the video latents are vision_tokens[0], every
    noisy token takes the step's timestep."""
    latents, outputs = inp["vision_tokens"][0].clone(), []
    tokens = inp["vision_timesteps"].shape[0]
    with torch.no_grad():
        for t in torch.linspace(1.0, 0.05, steps, device=latents.device):
            out = model(**dict(inp, vision_tokens=[latents],
                               vision_timesteps=(t * timestep_scale).expand(tokens)),
                        return_dict=False)[0][0]
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
