"""MiniMaxH3Transformer3DModel (MiniMax-H3, video and audio): one stack of blocks over a packed
sequence of text, video and audio rows, called positionally; the cached residual is the whole
packed stream's, so a skipped step serves video and audio alike. Each row takes its AdaLN
modulation from a table indexed by its noise level and modality (``adaln_indices``); the
layout is one for the whole batch, so only the stream is indexed by sample. The indicator is
block 0's modulated input, computed the block's way. No published coefficients."""

from cachekern.models.base import Adapter, Indicator


class MiniMaxH3Adapter(Adapter):
    family = "minimax_h3"
    model_class = "MiniMaxH3Transformer3DModel"
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "temb", "adaln_indices", "rotary_emb")
    batched_args = ()          # temb and the indices describe the layout every sample shares
    call_by_keyword = False
    returns = ("hidden_states",)

    def indicator(self, blocks, call):
        return Indicator(embedding=self.reference_modulated_input(blocks, call))

    def reference_modulated_input(self, blocks, call):
        block = blocks[0]
        shift, scale = block.adaln_proj(call.extras["temb"])[:2]
        rows = call.extras["adaln_indices"]
        return block.norm1(call.hidden) * (1.0 + scale.index_select(0, rows)) + \
            shift.index_select(0, rows)
