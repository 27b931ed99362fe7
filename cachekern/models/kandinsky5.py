"""Kandinsky5Transformer3DModel (Kandinsky 5.0 video and image): its text blocks run first, on
the text alone; the stack is the visual blocks, called positionally with the visual tokens, the
text, the time embedding, the visual rotary table (one a sample) and the sparse-attention
parameters. The indicator is visual block 0's modulated self-attention input (LayerNorm without
affine, shift and scale from the block's own modulation of the time embedding). No published
coefficients."""

import torch

from cachekern.models.base import Adapter, Indicator


class Kandinsky5Adapter(Adapter):
    family = "kandinsky5"
    model_class = "Kandinsky5Transformer3DModel"
    graph_uncapturable = ("its time embedding copies its frequency table from the host to the "
                          "GPU on every call")
    lists = ("visual_transformer_blocks",)
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "rotary_emb",
                  "sparse_params")
    batched_args = ("encoder_hidden_states", "temb", "rotary_emb")
    call_by_keyword = False
    returns = ("hidden_states",)

    @staticmethod
    def _shift_scale(block, call):
        # The block's own split: 9 chunks (shift, scale, gate for three sub-layers), the first
        # two for its self-attention input.
        params = block.visual_modulation(call.extras["temb"]).unsqueeze(dim=1)
        shift, scale, _ = torch.chunk(torch.chunk(params, 3, dim=-1)[0], 3, dim=-1)
        return shift.squeeze(1), scale.squeeze(1)

    def indicator(self, blocks, call):
        shift, scale = self._shift_scale(blocks[0], call)
        return Indicator(scale, shift, "layer", blocks[0].self_attention_norm.eps)

    def reference_modulated_input(self, blocks, call):
        shift, scale = self._shift_scale(blocks[0], call)
        hidden = call.hidden
        return (blocks[0].self_attention_norm(hidden.float()) * (scale[:, None].float() + 1.0)
                + shift[:, None].float()).type_as(hidden)
