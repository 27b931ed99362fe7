"""QwenImage21Transformer2DModel (Qwen-Image 2.1): single-stream blocks over one joint sequence,
the text and condition images first and the target image's tokens last, all modulated by one
table the model computes (``modulation``, a row a sample, and with ``causal_condition`` one
more, for t = 0, that the prefix takes).

The cached stream is the target image's tokens: the prefix, where a call carries it, runs
through the blocks with them, and a skipped call hands it back as it came (under
``causal_condition`` it does not change with the step; the pipeline reads only the target's
positions of the output). With its pipeline's KV cache, the first step prefills every block's
cache from the whole sequence and later calls carry the target tokens only: the stack gives
each block its own layer of the cache (a forward() argument), and the cached residual has the
same shape on both kinds of call. The indicator is block 0's modulated input for the target
tokens, computed the block's way. Its rotary table reads the sequence layout on the host, so
its forward cannot be captured as a graph. No published coefficients."""

import torch

from cachekern.models.base import Adapter, Indicator, StackCall

_PREFIX = "_cachekern_prefix"


class QwenImage21Adapter(Adapter):
    family = "qwen_image21"
    model_class = "QwenImage21Transformer2DModel"
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "modulation", "rotary_emb", "attention_mask",
                  "target_token_mask", "layer_cache", "kv_cache_mode", "cache_write_slice",
                  "segments", "key_valid")
    batched_args = ("key_valid", _PREFIX)
    returns = ("hidden_states",)
    forward_inputs = ("kv_cache",)
    graph_uncapturable = ("its rotary table reads the token layout on the host (.tolist()), "
                          "and its forward counts the prefix tokens on the host")
    stack_graph_uncapturable = ("with its pipeline's KV cache each block reads and fills its "
                                "layer of the cache, a Python object a graph cannot replay")

    def stack_call(self, args, kwargs):
        call = super().stack_call(args, kwargs)
        mask = call.extras.get("target_token_mask")
        if mask is not None:
            prefix = int((~mask).sum())     # a host read, as the model's forward makes
            if prefix:
                call.extras[_PREFIX] = call.hidden[:, :prefix]
                call.hidden = call.hidden[:, prefix:]
        return call

    def stack_output(self, call):
        prefix = call.extras.get(_PREFIX)
        return call.hidden if prefix is None else torch.cat([prefix, call.hidden], dim=1)

    def run_blocks(self, model, call: StackCall, blocks) -> StackCall:
        extras = dict(call.extras)
        prefix = extras.pop(_PREFIX, None)
        cache = extras.pop("kv_cache", None)
        joint = call.hidden if prefix is None else torch.cat([prefix, call.hidden], dim=1)
        for i, block in enumerate(blocks):
            layer = cache.get_layer(i) if cache is not None else extras.get("layer_cache")
            joint = block(hidden_states=joint, **dict(extras, layer_cache=layer))
        if prefix is None:
            return StackCall(joint, extras)
        n = prefix.shape[1]
        extras[_PREFIX] = joint[:, :n]
        return StackCall(joint[:, n:], extras)

    def _target_mask(self, call):
        mask = call.extras.get("target_token_mask")
        return None if mask is None else mask[-call.hidden.shape[1]:]

    def indicator(self, blocks, call):
        return Indicator(embedding=self.reference_modulated_input(blocks, call))

    def reference_modulated_input(self, blocks, call):
        block = blocks[0]
        first = call.extras["modulation"].chunk(2, dim=-1)[0]
        return block._modulate(block.img_norm1(call.hidden), first, self._target_mask(call))[0]

    def select(self, call, index):
        if call.extras.get("kv_cache") is not None or \
                call.extras.get("layer_cache") is not None:
            raise ValueError("TeaCache: decision='per_sample' cannot split a call that reads or "
                             "fills Qwen-Image 2.1's KV cache (one cache holds the whole "
                             "batch); use decision='global', or call the pipeline with "
                             "use_kv_cache=False")
        sub = super().select(call, index)
        modulation = call.extras["modulation"]
        if call.extras.get("target_token_mask") is not None:    # the t = 0 row stays last
            rows = torch.cat([index.to(modulation.device),
                              torch.tensor([modulation.shape[0] - 1], device=modulation.device)])
            sub.extras["modulation"] = modulation[rows]
        else:
            sub.extras["modulation"] = modulation[index]
        return sub
