"""FluxTransformer2DModel (FLUX.1, and Flux-like models built from the same blocks): 19
double-stream then 38 single-stream blocks, one stack, as TeaCache's FLUX script caches them.
Bria, LongCat-Image and Ovis-Image have FLUX's blocks and loops under other names; FLUX's
published polynomial is FLUX.1-dev's, so theirs is the raw distance."""

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


class BriaAdapter(FluxAdapter):
    """BriaTransformer2DModel (Bria 3.x): FLUX's blocks and loops under another name."""

    family = "bria"
    model_class = "BriaTransformer2DModel"


class LongCatImageAdapter(FluxAdapter):
    """LongCatImageTransformer2DModel (LongCat-Image): FLUX's double and single blocks."""

    family = "longcat_image"
    model_class = "LongCatImageTransformer2DModel"
    uncacheable_args = ()


class OvisImageAdapter(FluxAdapter):
    """OvisImageTransformer2DModel (Ovis-Image): FLUX's double and single blocks."""

    family = "ovis_image"
    model_class = "OvisImageTransformer2DModel"
    uncacheable_args = ()
