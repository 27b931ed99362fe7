"""FluxTransformer2DModel (FLUX.1, and Flux-like models built from the same blocks): 19
double-stream then 38 single-stream blocks, one stack, as TeaCache's FLUX script caches them."""

from cachekern.models.adaln_zero import AdaLNZeroStackAdapter


class FluxAdapter(AdaLNZeroStackAdapter):
    family = "flux"
    model_class = "FluxTransformer2DModel"
    lists = ("transformer_blocks", "single_transformer_blocks")
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "image_rotary_emb",
                  "joint_attention_kwargs")
    uncacheable_args = ("controlnet_block_samples", "controlnet_single_block_samples")
    # The rotary table depends only on the position ids, which a pipeline passes unchanged.
    memoized_modules = {"pos_embed": ("txt_ids", "img_ids")}

    # The text stream's projection and the rotary table feed the blocks only.
    stack_only_modules = ("context_embedder", "pos_embed")
