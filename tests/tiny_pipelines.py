"""Real diffusers pipelines built from tiny components: a word-level tokenizer, text encoders from
transformers configs, tiny VAEs and each pipeline's own scheduler, with random weights. Each
builder returns (pipeline, the keyword arguments of one call as a user makes it)."""

import torch

import diffusers

transformers = __import__("pytest").importorskip("transformers")

WORDS = "a photo of red blue green cat dog square circle on the table".split()
SPECIAL = ["<pad>", "<unk>", "</s>", "<s>"]
VOCAB = 32


def tokenizer(max_length=77):
    """A word-level tokenizer (nothing to download): pads, truncates and returns masks as the
    pipelines ask their CLIP and T5 tokenizers to."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
        bos_token="<s>", model_max_length=max_length)


def clip(hidden=32, projection=None):
    config = transformers.CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=projection or hidden,
        bos_token_id=3, eos_token_id=2, pad_token_id=0)
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return cls(config).eval()


def t5(d_model=32, umt5=False):
    cls, config = ((transformers.UMT5EncoderModel, transformers.UMT5Config) if umt5 else
                   (transformers.T5EncoderModel, transformers.T5Config))
    return cls(config(vocab_size=VOCAB, d_model=d_model, d_kv=8, d_ff=37, num_layers=2,
                      num_heads=4, pad_token_id=0, eos_token_id=2)).eval()


def vae(latent_channels, **extra):
    return diffusers.AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,),
        layers_per_block=1, latent_channels=latent_channels, norm_num_groups=1,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        **extra).eval()


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def flux():
    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8]).eval()
    pipe = diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae(1, shift_factor=0.06,
                                                                      scaling_factor=1.5,
                                                                      use_quant_conv=False,
                                                                      use_post_quant_conv=False),
        text_encoder=clip(), tokenizer=tokenizer(), text_encoder_2=t5(), tokenizer_2=tokenizer(),
        transformer=transformer)
    # true CFG: a "cond" and an "uncond" call per step, each in its cache_context
    return pipe, dict(prompt="a photo of a red square", negative_prompt="blue circle",
                      true_cfg_scale=2.0, height=16, width=16, max_sequence_length=8)


def sd3():
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=16,
        pooled_projection_dim=64, out_channels=4, pos_embed_max_size=16).eval()
    pipe = diffusers.StableDiffusion3Pipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=vae(4, shift_factor=0.06, scaling_factor=1.5),
        text_encoder=clip(projection=32), tokenizer=tokenizer(),
        text_encoder_2=clip(projection=32), tokenizer_2=tokenizer(),
        text_encoder_3=t5(64), tokenizer_3=tokenizer(), transformer=transformer)
    # CFG batched: one call on [uncond, cond] per step
    return pipe, dict(prompt="a red cat", negative_prompt="a dog", guidance_scale=3.0,
                      height=8, width=8, max_sequence_length=8)


def pixart_sigma():
    torch.manual_seed(0)
    transformer = diffusers.PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2,
        caption_channels=32, in_channels=4, cross_attention_dim=16, out_channels=8,
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6).eval()
    pipe = diffusers.PixArtSigmaPipeline(
        tokenizer=tokenizer(), text_encoder=t5(), vae=vae(4), transformer=transformer,
        scheduler=diffusers.DPMSolverMultistepScheduler())
    return pipe, dict(prompt="a blue circle on the table", negative_prompt="", guidance_scale=3.0,
                      height=8, width=8, max_sequence_length=8, clean_caption=False,
                      use_resolution_binning=False)


def wan_transformer(seed=0):
    torch.manual_seed(seed)
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
        out_channels=4, text_dim=32, freq_dim=16, ffn_dim=32, num_layers=2,
        rope_max_seq_len=32).eval()


def wan(two_experts=False):
    """Wan 2.1; two_experts: Wan 2.2's two-stage form (transformer for the high-noise steps,
    transformer_2 below the boundary)."""
    transformer = wan_transformer()
    wan_vae = diffusers.AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1],
                                         num_res_blocks=1, temperal_downsample=[False, True, True],
                                         latents_mean=[0.1, -0.1, 0.0, 0.2],
                                         latents_std=[1.5, 2.0, 1.0, 2.5]).eval()
    experts = dict(transformer_2=wan_transformer(1), boundary_ratio=0.875) if two_experts else {}
    pipe = diffusers.WanPipeline(
        tokenizer=tokenizer(), text_encoder=t5(umt5=True), transformer=transformer, vae=wan_vae,
        scheduler=diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction",
                                                    use_flow_sigmas=True, flow_shift=3.0),
        **experts)
    return pipe, dict(prompt="a dog", negative_prompt="a cat", guidance_scale=3.0, height=32,
                      width=32, num_frames=5, max_sequence_length=8)


def unet(**config):
    """A tiny UNet2DConditionModel: SD's layout, `config` overriding it (SDXL's)."""
    layout = dict(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                  out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                  norm_num_groups=4, attention_head_dim=4)
    return diffusers.UNet2DConditionModel(**{**layout, **config}).eval()


def stable_diffusion():
    torch.manual_seed(0)
    sd_unet = unet()
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae(4), text_encoder=clip(), tokenizer=tokenizer(), unet=sd_unet,
        scheduler=diffusers.DDIMScheduler(steps_offset=1, clip_sample=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe, dict(prompt="a photo of a cat", negative_prompt="a dog", guidance_scale=3.0,
                      height=8, width=8)


def cogvideox():
    torch.manual_seed(0)
    transformer = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        time_embed_dim=2, text_embed_dim=32, num_layers=2, sample_width=2, sample_height=2,
        sample_frames=9, patch_size=2, temporal_compression_ratio=4,
        max_text_seq_length=8).eval()
    cog_vae = diffusers.AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(4, 4, 4, 4),
        latent_channels=4, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=4).eval()
    pipe = diffusers.CogVideoXPipeline(
        tokenizer=tokenizer(), text_encoder=t5(), vae=cog_vae, transformer=transformer,
        scheduler=diffusers.CogVideoXDDIMScheduler())
    return pipe, dict(prompt="a cat", negative_prompt="a dog", guidance_scale=3.0, height=16,
                      width=16, num_frames=9, max_sequence_length=8)


def ltx_video():
    torch.manual_seed(0)
    transformer = diffusers.LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, num_layers=2, caption_channels=32).eval()
    ltx_vae = diffusers.AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 4, 4, 4),
        decoder_block_out_channels=(4, 4, 4, 4), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False), upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True,
        decoder_causal=False).eval()
    pipe = diffusers.LTXPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=ltx_vae, text_encoder=t5(),
        tokenizer=tokenizer(), transformer=transformer)
    return pipe, dict(prompt="a dog", negative_prompt="a cat", guidance_scale=3.0, height=32,
                      width=32, num_frames=9, max_sequence_length=8)


def stable_diffusion_xl():
    # SDXL's UNet: attention in the second stage only, both text encoders' width, and the added
    # time/size embedding fed by the second encoder's projection (6 size ids × 8 + 32).
    torch.manual_seed(0)
    sdxl_unet = unet(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                     attention_head_dim=(2, 4), use_linear_projection=True,
                     addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=6 * 8 + 32,
                     transformer_layers_per_block=(1, 2))
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae(4), text_encoder=clip(), text_encoder_2=clip(projection=32),
        tokenizer=tokenizer(), tokenizer_2=tokenizer(), unet=sdxl_unet,
        scheduler=diffusers.EulerDiscreteScheduler(steps_offset=1))
    return pipe, dict(prompt="a photo of a dog", negative_prompt="a cat", guidance_scale=3.0,
                      height=8, width=8)


def hunyuan_video():
    torch.manual_seed(0)
    transformer = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1,
        guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=32,
        rope_axes_dim=(2, 4, 4)).eval()
    # The pipeline reads the Llama encoder's third-to-last hidden state: three layers at least.
    llama = transformers.LlamaModel(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=37, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=0, bos_token_id=3, eos_token_id=2)).eval()
    hunyuan_vae = diffusers.AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(4, 4, 4, 4),
        layers_per_block=1, norm_num_groups=2, spatial_compression_ratio=8,
        temporal_compression_ratio=4).eval()
    pipe = diffusers.HunyuanVideoPipeline(
        text_encoder=llama, tokenizer=tokenizer(512), transformer=transformer, vae=hunyuan_vae,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip(),
        tokenizer_2=tokenizer())
    # true_cfg_scale > 1 with a negative prompt: CFG as two calls, each in its cache_context
    return pipe, dict(prompt="a cat", negative_prompt="a dog", true_cfg_scale=3.0,
                      guidance_scale=6.0, height=16, width=16, num_frames=5,
                      max_sequence_length=8)


TRANSFORMER_PIPELINES = {"flux": flux, "sd3": sd3, "pixart_sigma": pixart_sigma, "wan": wan,
                         "cogvideox": cogvideox, "ltx_video": ltx_video,
                         "hunyuan_video": hunyuan_video}
UNET_PIPELINES = {"stable_diffusion": stable_diffusion, "stable_diffusion_xl": stable_diffusion_xl}
