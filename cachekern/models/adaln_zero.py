"""Families whose block 0 starts with an AdaLN-Zero ``norm1`` (FLUX, SD3 / SD3.5, HunyuanVideo):
the indicator is that norm's output for the image tokens, LayerNorm without affine modulated by
shift_msa / scale_msa, the first two chunks of ``norm1.linear(silu(temb))``. The cached residual
is the image stream's (the text stream is not used after the blocks).
"""

from cachekern.models.base import Adapter, Indicator
from cachekern.models.served import serving


class AdaLNZeroStackAdapter(Adapter):
    def indicator(self, blocks, call):
        norm1 = blocks[0].norm1
        emb = norm1.linear(norm1.silu(call.extras["temb"]))
        # AdaLayerNormZero splits 6 ways, SD3.5's AdaLayerNormZeroX 9; both start shift, scale.
        chunks = emb.chunk(norm1.linear.out_features // call.hidden.shape[-1], dim=1)
        return Indicator(chunks[1], chunks[0], "layer", norm1.norm.eps, chunks=chunks,
                         projection=emb)

    def serving_projection(self, blocks, indicator):
        # norm1 computes linear(silu(temb)) from the same temb: serve the indicator's result.
        norm1 = blocks[0].norm1
        if indicator.projection is None or getattr(norm1, "emb", None) is not None:
            return super().serving_projection(blocks, indicator)
        return serving(norm1, "linear", indicator.projection)

    def supports_reuse_modulated(self, blocks):
        # Plain AdaLayerNormZero fed an embedding returns (m, gate_msa, shift_mlp, scale_mlp,
        # gate_mlp); SD3.5's AdaLayerNormZeroX also normalises a second stream.
        from diffusers.models.normalization import AdaLayerNormZero

        norm1 = getattr(blocks[0], "norm1", None)
        return type(norm1) is AdaLayerNormZero and norm1.emb is None

    def norm1_output(self, indicator, modulated):
        chunks = indicator.chunks
        return modulated, chunks[2], chunks[3], chunks[4], chunks[5]

    def reference_modulated_input(self, blocks, call):
        return blocks[0].norm1(call.hidden, emb=call.extras["temb"])[0]
