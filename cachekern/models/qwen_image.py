"""QwenImageTransformer2DModel: its dual-stream blocks as one stack, each returning the text
stream first; the cached residual is the image stream's (the model keeps only it). The
indicator is block 0's modulated image input: LayerNorm without affine, with shift and scale
from the first half of ``img_mod(temb)``. Edit models whose reference image takes another
timestep (``zero_cond_t``: a modulation per token) compare that input computed the block's
way. Calls with ControlNet residuals run uncached. No published TeaCache polynomial."""

from cachekern.models.base import Adapter, Indicator


class QwenImageAdapter(Adapter):
    family = "qwen_image"
    model_class = "QwenImageTransformer2DModel"
    graph_uncapturable = ("its forward reads the text lengths from the mask on the host "
                          "(compute_text_seq_len_from_mask)")
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "encoder_hidden_states", "encoder_hidden_states_mask",
                  "temb", "image_rotary_emb", "joint_attention_kwargs", "modulate_index")
    batched_args = ("encoder_hidden_states", "encoder_hidden_states_mask", "temb",
                    "modulate_index")
    uncacheable_args = ("controlnet_block_samples",)

    def indicator(self, blocks, call):
        if call.extras.get("modulate_index") is not None:
            return Indicator(embedding=self.reference_modulated_input(blocks, call))
        block = blocks[0]
        shift, scale = block.img_mod(call.extras["temb"]).chunk(2, dim=-1)[0].chunk(3, dim=-1)[:2]
        return Indicator(scale, shift, "layer", block.img_norm1.eps)

    def reference_modulated_input(self, blocks, call):
        block = blocks[0]
        modulation = block.img_mod(call.extras["temb"]).chunk(2, dim=-1)[0]
        return block._modulate(block.img_norm1(call.hidden), modulation,
                               call.extras.get("modulate_index"))[0]
