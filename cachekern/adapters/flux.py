"""FluxTransformer2DModel (FLUX.1, and Flux-like models built from the same blocks).

The 19 double-stream and 38 single-stream blocks run as one stack; the cached residual is the
image stream's, as in TeaCache's FLUX script (the text stream is not used after the blocks). The
indicator is block 0's norm1 output for the image tokens: LayerNorm (no affine, eps 1e-6)
modulated by shift_msa / scale_msa from norm1.linear(silu(temb)).
"""

from cachekern.adapters.base import Adapter, Indicator, StackCall


class FluxAdapter(Adapter):
    family = "flux"
    model_class = "FluxTransformer2DModel"
    uncacheable_args = ("controlnet_block_samples", "controlnet_single_block_samples")

    def block_lists(self, model):
        return ["transformer_blocks", "single_transformer_blocks"]

    def stack_call(self, args, kwargs):
        names = ("hidden_states", "encoder_hidden_states", "temb", "image_rotary_emb",
                 "joint_attention_kwargs")
        values = dict(zip(names, args))
        values.update(kwargs)
        hidden = values.pop("hidden_states")
        return StackCall(hidden, values)

    def run_blocks(self, model, call, blocks):
        extras = dict(call.extras)
        hidden = call.hidden
        encoder = extras.pop("encoder_hidden_states")
        for block in blocks:
            encoder, hidden = block(hidden_states=hidden, encoder_hidden_states=encoder, **extras)
        return StackCall(hidden, {**call.extras, "encoder_hidden_states": encoder})

    def stack_output(self, call):
        return call.extras["encoder_hidden_states"], call.hidden

    def indicator(self, blocks, call):
        norm1 = blocks[0].norm1
        emb = norm1.linear(norm1.silu(call.extras["temb"]))
        shift_msa, scale_msa = emb.chunk(6, dim=1)[:2]
        return Indicator(scale_msa, shift_msa, "layer", norm1.norm.eps)

    def reference_modulated_input(self, blocks, call):
        return blocks[0].norm1(call.hidden, emb=call.extras["temb"])[0]

    def select(self, call, index):
        extras = dict(call.extras)
        extras["encoder_hidden_states"] = extras["encoder_hidden_states"][index]
        extras["temb"] = extras["temb"][index]
        return StackCall(call.hidden[index], extras)
