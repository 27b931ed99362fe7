"""WanTransformer3DModel (Wan2.1 / Wan2.2): its blocks as one stack, the residual of the token
stream. The indicator is the timestep projection the blocks receive (TeaCache's "e0", the
``use_ret_steps`` mode of the published Wan script), compared directly, without a norm.

The published setting for this indicator computes the first 5 steps and not the last:
``TeaCache(warmup_steps=5, compute_last_step=False, ...)``. "auto" coefficients exist for the T2V
1.3B (hidden 1536) and 14B (hidden 5120) models; others get the raw distance.
"""

from cachekern.adapters.base import Adapter, Indicator, StackCall


class WanAdapter(Adapter):
    family = "wan"
    model_class = "WanTransformer3DModel"
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "rotary_emb")

    def block_lists(self, model):
        return ["blocks"]

    def coefficient_key(self, model):
        hidden = model.config.num_attention_heads * model.config.attention_head_dim
        return {1536: "wan_t2v_1.3b_e0", 5120: "wan_t2v_14b_e0"}.get(hidden, "wan")

    def stack_call(self, args, kwargs):
        values = dict(zip(self.block_args, args))
        values.update(kwargs)
        return StackCall(values.pop("hidden_states"), values)

    def run_blocks(self, model, call, blocks):
        hidden = call.hidden
        for block in blocks:
            hidden = block(hidden, call.extras["encoder_hidden_states"], call.extras["temb"],
                           call.extras["rotary_emb"])
        return StackCall(hidden, call.extras)

    def stack_output(self, call):
        return call.hidden

    def indicator(self, blocks, call):
        return Indicator(embedding=call.extras["temb"])

    def reference_modulated_input(self, blocks, call):
        return call.extras["temb"]

    def select(self, call, index):
        extras = dict(call.extras)
        extras["encoder_hidden_states"] = extras["encoder_hidden_states"][index]
        extras["temb"] = extras["temb"][index]
        return StackCall(call.hidden[index], extras)
