"""HunyuanVideoTransformer3DModel: 20 double-stream then 40 single-stream blocks, one stack,
called positionally; the indicator is block 0's AdaLN-Zero norm1 output, as in the published
HunyuanVideo script."""

from cachekern.models.adaln_zero import AdaLNZeroStackAdapter


class HunyuanVideoAdapter(AdaLNZeroStackAdapter):
    family = "hunyuan_video"
    model_class = "HunyuanVideoTransformer3DModel"
    lists = ("transformer_blocks", "single_transformer_blocks")
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "attention_mask",
                  "image_rotary_emb", "token_replace_emb", "first_frame_num_tokens")
    batched_args = ("encoder_hidden_states", "temb", "attention_mask", "token_replace_emb")
    call_by_keyword = False
    returns = ("hidden_states", "encoder_hidden_states")


class HunyuanVideoFramepackAdapter(HunyuanVideoAdapter):
    """HunyuanVideoFramepackTransformer3DModel (FramePack): HunyuanVideo's blocks and call; the
    stream also carries the clean history latents packed before the new frames, which the
    stack caches with them (the model keeps the new frames' tokens after the blocks). No
    published coefficients."""
    family = "hunyuan_video_framepack"
    model_class = "HunyuanVideoFramepackTransformer3DModel"
    graph_uncapturable = ("its forward cuts the text to each sample's length, read from the "
                          "mask on the host")


class HunyuanVideo15Adapter(AdaLNZeroStackAdapter):
    """HunyuanVideo15Transformer3DModel (HunyuanVideo 1.5): one list of double-stream blocks,
    called positionally; block 0's AdaLN-Zero norm1 is the indicator, as for HunyuanVideo."""
    family = "hunyuan_video15"
    model_class = "HunyuanVideo15Transformer3DModel"
    graph_uncapturable = ("its forward reorders each sample's text tokens with boolean masks, "
                          "whose shapes the host must read")
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "attention_mask",
                  "freqs_cis")
    batched_args = ("encoder_hidden_states", "temb", "attention_mask")
    call_by_keyword = False
    returns = ("hidden_states", "encoder_hidden_states")


class HunyuanImageAdapter(AdaLNZeroStackAdapter):
    """HunyuanImageTransformer2DModel (HunyuanImage 2.1): double- then single-stream blocks,
    called with the two streams and temb positionally and the mask and rotary table by
    keyword; block 0's AdaLN-Zero norm1 is the indicator, as for HunyuanVideo. No published
    coefficients."""
    family = "hunyuan_image"
    model_class = "HunyuanImageTransformer2DModel"
    lists = ("transformer_blocks", "single_transformer_blocks")
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "attention_mask",
                  "image_rotary_emb")
    batched_args = ("encoder_hidden_states", "temb", "attention_mask")
    returns = ("hidden_states", "encoder_hidden_states")
