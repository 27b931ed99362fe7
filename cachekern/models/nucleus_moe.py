"""NucleusMoEImageTransformer2DModel (Nucleus-Image): single-stream image blocks that
cross-attend to the text, some with a mixture-of-experts feed-forward, called by keyword; the
cached residual is the image stream's. The indicator is block 0's modulated input,
LayerNorm(x) · (1 + scale), the scale the first quarter of ``img_mod(temb)`` (no shift). Its
forward reads the text length on the host, so it cannot be captured as a graph. No published
coefficients."""

from cachekern.models.base import Adapter, Indicator


class NucleusMoEImageAdapter(Adapter):
    family = "nucleus_moe_image"
    model_class = "NucleusMoEImageTransformer2DModel"
    graph_uncapturable = ("its forward reads the text length from the mask on the host "
                          "(compute_text_seq_len_from_mask)")
    stack_graph_uncapturable = ("its mixture-of-experts feed-forward reads the tokens per "
                                "expert to the host (.tolist()) in every block")
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "image_rotary_emb",
                  "attention_kwargs")
    batched_args = ("encoder_hidden_states", "temb")
    returns = ("hidden_states",)

    def _scale(self, block, call):
        return block.img_mod(call.extras["temb"]).chunk(4, dim=-1)[0]

    def indicator(self, blocks, call):
        return Indicator(self._scale(blocks[0], call), None, "layer",
                         blocks[0].pre_attn_norm.eps)

    def reference_modulated_input(self, blocks, call):
        block = blocks[0]
        return block.pre_attn_norm(call.hidden) * (1 + self._scale(block, call).unsqueeze(1))

    def select(self, call, index):
        sub = super().select(call, index)
        kwargs = sub.extras.get("attention_kwargs")
        mask = (kwargs or {}).get("attention_mask")
        if mask is not None:            # the joint mask, one row a sample
            sub.extras["attention_kwargs"] = dict(kwargs, attention_mask=mask[index])
        return sub
