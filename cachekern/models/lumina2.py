"""Lumina2Transformer2DModel (Lumina-Image 2.0): its joint text-and-image layers as one stack,
called positionally; the cached residual is the joint stream's. The indicator is layer 0's
modulated input, RMSNorm(x) · (1 + scale_msa); the norm's elementwise weight is folded into the
scale, (1 + scale') = weight · (1 + scale_msa), so the fused kernel applies both. TeaCache4Lumina2
watches the same input (norm1 of the joint sequence): its published polynomial is the family's."""

from cachekern.models.base import Adapter, Indicator


class Lumina2Adapter(Adapter):
    family = "lumina2"
    model_class = "Lumina2Transformer2DModel"
    graph_uncapturable = ("its forward reads the caption lengths to the host, "
                          "attention_mask.sum(dim=1).tolist(), on every call")
    lists = ("layers",)
    block_args = ("hidden_states", "attention_mask", "image_rotary_emb", "temb")
    batched_args = ("attention_mask", "temb", "image_rotary_emb")
    call_by_keyword = False
    returns = ("hidden_states",)

    def _scale(self, block, call):
        norm1 = getattr(block, "norm1", None)
        if not hasattr(norm1, "linear"):
            raise TypeError("cachekern: Lumina2 layer 0 has no modulated norm1 "
                            "(modulation=False); it has no indicator")
        return norm1, norm1.linear(norm1.silu(call.extras["temb"])).chunk(4, dim=1)[0]

    def indicator(self, blocks, call):
        norm1, scale = self._scale(blocks[0], call)
        weight = norm1.norm.weight
        if weight is not None:
            scale = weight.to(scale.dtype) * (1 + scale) - 1
        return Indicator(scale, None, "rms", norm1.norm.eps)

    def reference_modulated_input(self, blocks, call):
        return blocks[0].norm1(call.hidden, call.extras["temb"])[0]
