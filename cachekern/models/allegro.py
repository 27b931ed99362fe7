"""AllegroTransformer3DModel (Allegro, text to video): PixArt's adaLN-single modulation in its
own block class, called with keywords, the embedded timestep as `temb`. The indicator is block
0's modulated norm1 output; the stack is the model's transformer_blocks. No published
coefficients."""

from cachekern.models.base import Adapter, Indicator
from cachekern.models.basic_block import ada_norm_single_shift_scale


class AllegroAdapter(Adapter):
    family = "allegro"
    model_class = "AllegroTransformer3DModel"
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "attention_mask",
                  "encoder_attention_mask", "image_rotary_emb")
    batched_args = ("encoder_hidden_states", "temb", "attention_mask", "encoder_attention_mask")
    returns = ("hidden_states",)

    def _norm(self, block):
        if getattr(block.norm1, "weight", None) is not None:
            raise TypeError("cachekern: block 0's norm1 has an elementwise affine "
                            "(norm_elementwise_affine=True), which the fused indicator does "
                            "not apply")
        return block.norm1

    def indicator(self, blocks, call):
        shift, scale = ada_norm_single_shift_scale(blocks[0], call, "temb")
        return Indicator(scale, shift, "layer", self._norm(blocks[0]).eps)

    def reference_modulated_input(self, blocks, call):
        shift, scale = ada_norm_single_shift_scale(blocks[0], call, "temb")
        return blocks[0].norm1(call.hidden) * (1 + scale[:, None]) + shift[:, None]
