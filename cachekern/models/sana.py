"""SanaTransformer2DModel: linear-attention blocks modulated as PixArt's ("ada_norm_single": shift
and scale from the block's learned table plus the embedded timestep), called positionally. The
indicator is block 0's modulated norm1 output; ControlNet residuals, added between blocks, make
a call uncacheable."""

from cachekern.models.base import Adapter, Indicator
from cachekern.models.basic_block import ada_norm_single_shift_scale


class SanaAdapter(Adapter):
    family = "sana"
    model_class = "SanaTransformer2DModel"
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "attention_mask", "encoder_hidden_states",
                  "encoder_attention_mask", "timestep", "height", "width")
    batched_args = ("attention_mask", "encoder_hidden_states", "encoder_attention_mask",
                    "timestep")
    call_by_keyword = False
    returns = ("hidden_states",)
    uncacheable_args = ("controlnet_block_samples",)

    def indicator(self, blocks, call):
        if blocks[0].norm1.weight is not None:
            raise TypeError("cachekern: Sana block 0's norm1 has an elementwise affine, which "
                            "the fused indicator does not apply")
        shift, scale = ada_norm_single_shift_scale(blocks[0], call)
        return Indicator(scale, shift, "layer", blocks[0].norm1.eps)

    def reference_modulated_input(self, blocks, call):
        shift, scale = ada_norm_single_shift_scale(blocks[0], call)
        return blocks[0].norm1(call.hidden) * (1 + scale[:, None]) + shift[:, None]
