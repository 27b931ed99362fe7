"""CogView4Transformer2DModel: its blocks as one stack, called positionally, each returning the
image stream first. The indicator is block 0's norm1 output for the image tokens: LayerNorm
without affine modulated by shift_msa / scale_msa, chunks 0 and 2 of ``norm1.linear(temb)``
(the model applies the SiLU to temb before the blocks). No published TeaCache polynomial."""

from cachekern.models.base import Adapter, Indicator


class CogView4Adapter(Adapter):
    family = "cogview4"
    model_class = "CogView4Transformer2DModel"
    graph_uncapturable = ("its rotary table is built from host tensors and copied to the GPU "
                          "on every call")
    stack_graph_uncapturable = ("its rotary table is built on the host and each block copies "
                                "it to the GPU")
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "image_rotary_emb",
                  "attention_mask", "attention_kwargs")
    call_by_keyword = False
    returns = ("hidden_states", "encoder_hidden_states")

    def indicator(self, blocks, call):
        norm1 = blocks[0].norm1
        chunks = norm1.linear(call.extras["temb"]).chunk(12, dim=1)
        return Indicator(chunks[2], chunks[0], "layer", norm1.norm.eps)

    def reference_modulated_input(self, blocks, call):
        return blocks[0].norm1(call.hidden, call.extras["encoder_hidden_states"],
                               call.extras["temb"])[0]
