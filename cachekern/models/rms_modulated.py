"""Families whose block 0 modulates an RMSNorm: LTX-Video (shift and scale from a learned table
plus the timestep embedding) and Mochi (scale only, from MochiRMSNormZero). The indicator is that
modulated input, as in the published LTX-Video and Mochi scripts; the cached residual is the
block stack's (the published scripts also fold the final norm into it).
"""

from cachekern.models.base import Adapter, Indicator


class LTXVideoAdapter(Adapter):
    family = "ltx_video"
    model_class = "LTXVideoTransformer3DModel"
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "image_rotary_emb",
                  "encoder_attention_mask")
    batched_args = ("encoder_hidden_states", "temb", "encoder_attention_mask",
                    "image_rotary_emb")
    returns = ("hidden_states",)

    def _ada_values(self, block, call):
        temb = call.extras["temb"]
        batch = call.hidden.shape[0]
        table = block.scale_shift_table
        return table[None, None].to(temb.device) + temb.reshape(batch, temb.size(1),
                                                                 table.shape[0], -1)

    def indicator(self, blocks, call):
        block = blocks[0]
        ada = self._ada_values(block, call)
        if ada.shape[1] != 1:
            # Per-token timesteps (LTX-Video 0.9.5+): the fused kernel takes one scale and shift
            # per sample, so compare the modulated input computed the model's way instead.
            return Indicator(embedding=self.reference_modulated_input(blocks, call))
        shift, scale = ada[:, 0, 0], ada[:, 0, 1]
        return Indicator(scale, shift, "rms", block.norm1.eps)

    def reference_modulated_input(self, blocks, call):
        block = blocks[0]
        ada = self._ada_values(block, call)
        shift, scale = ada[:, :, 0], ada[:, :, 1]
        return block.norm1(call.hidden) * (1 + scale) + shift


class MochiAdapter(Adapter):
    family = "mochi"
    model_class = "MochiTransformer3DModel"
    graph_uncapturable = ("its attention picks each sample's valid text tokens with "
                          "torch.nonzero, a host read")
    stack_graph_uncapturable = graph_uncapturable
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "encoder_attention_mask",
                  "image_rotary_emb")
    batched_args = ("encoder_hidden_states", "temb", "encoder_attention_mask")
    returns = ("hidden_states", "encoder_hidden_states")

    def indicator(self, blocks, call):
        norm1 = blocks[0].norm1
        scale = norm1.linear(norm1.silu(call.extras["temb"])).chunk(4, dim=1)[0]
        return Indicator(scale, None, "rms", norm1.norm.eps)

    def reference_modulated_input(self, blocks, call):
        return blocks[0].norm1(call.hidden, call.extras["temb"])[0]
