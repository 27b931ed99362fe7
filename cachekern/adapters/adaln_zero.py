"""Families whose blocks are double-stream AdaLN-Zero DiT blocks called as
``block(hidden_states=..., encoder_hidden_states=..., temb=..., **rest) -> (encoder, hidden)``
(FLUX, SD3 / SD3.5): the block lists run as one stack, the cached residual is the image stream's
(the text stream is not used after the blocks), and the indicator is block 0's ``norm1`` output:
LayerNorm without affine, modulated by shift_msa / scale_msa, the first two chunks of
``norm1.linear(silu(temb))``.
"""

from cachekern.adapters.base import Adapter, Indicator, StackCall


class AdaLNZeroStackAdapter(Adapter):
    lists = ()          # the model's block lists, in the order its forward runs them
    block_args = ()     # a block's parameters, in order (for positional calls)

    def block_lists(self, model):
        return list(self.lists)

    def stack_call(self, args, kwargs):
        values = dict(zip(self.block_args, args))
        values.update(kwargs)
        return StackCall(values.pop("hidden_states"), values)

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
        # AdaLayerNormZero splits 6 ways, SD3.5's AdaLayerNormZeroX 9; both start shift, scale.
        chunks = emb.chunk(norm1.linear.out_features // call.hidden.shape[-1], dim=1)
        return Indicator(chunks[1], chunks[0], "layer", norm1.norm.eps)

    def reference_modulated_input(self, blocks, call):
        return blocks[0].norm1(call.hidden, emb=call.extras["temb"])[0]

    def select(self, call, index):
        extras = dict(call.extras)
        extras["encoder_hidden_states"] = extras["encoder_hidden_states"][index]
        extras["temb"] = extras["temb"][index]
        return StackCall(call.hidden[index], extras)
