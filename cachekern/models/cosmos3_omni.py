"""Cosmos3OmniTransformer (Cosmos 3 Omni: text, video, sound and actions in one packed
sequence): a causal text ("understanding") prefix and the generated tokens, both through one
list of mixture-of-transformers decoder layers, each taking and returning the two streams,
called positionally. There is no batch dimension: a call is one packed sequence (its pipeline
makes one call per CFG pass), so per-sample decisions are the global one.

The cached stream is the generated tokens, [1, tokens, channels] (a view); the text prefix
goes through the layers with them on a computed call and is handed back as it came on a
skipped one (the model decodes only generated positions). The layers carry no timestep
modulation (the timestep embedding is added to the noisy tokens before them), so the indicator
is layer 0's normalised input of the generated stream, its RMSNorm computed the layer's way.
Block Caching caches both streams of every layer. No published coefficients."""

from cachekern.models.base import Adapter, Indicator, StackCall


class Cosmos3OmniAdapter(Adapter):
    family = "cosmos3_omni"
    model_class = "Cosmos3OmniTransformer"
    timestep_arg = "vision_timesteps"
    lists = ("layers",)
    block_args = ("und_seq", "hidden_states", "rotary_emb")
    returns = ("und_seq", "hidden_states")
    call_by_keyword = False
    batched_args = ()

    def stack_call(self, args, kwargs):
        call = super().stack_call(args, kwargs)
        return StackCall(call.hidden.unsqueeze(0), call.extras)

    def run_blocks(self, model, call, blocks):
        text, generated = call.extras["und_seq"], call.hidden[0]
        rope = call.extras["rotary_emb"]
        for block in blocks:
            text, generated = block(text, generated, rope)
        return StackCall(generated.unsqueeze(0), dict(call.extras, und_seq=text))

    def stack_output(self, call):
        return call.extras["und_seq"], call.hidden[0]

    def indicator(self, blocks, call):
        return Indicator(embedding=self.reference_modulated_input(blocks, call))

    def reference_modulated_input(self, blocks, call):
        return blocks[0].input_layernorm_moe_gen(call.hidden)
