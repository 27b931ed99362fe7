"""SanaWMLTX2RefinerTransformer3DModel (SANA-WM's autoregressive refiner on LTX-2's video
blocks): one list of blocks over the active window's video tokens, per-token AdaLN tables, and a
sliding-window KV cache (attention sink plus refined history) that each block reads through its
own layer.

Its pipeline calls it three ways: once to seed the sink (``kv_cache_mode="capture_pre_rope"``),
then the denoising steps of each window (``"inject"``: read the cache), then once per window on
the refined latents to append them to the history (``"inject_and_capture_post_rope"``). The
capturing calls write the cache and are no denoising steps: both methods run them uncached and
do not count them. The denoising steps are cached; each window's timesteps start again from the
top, which both methods read as a new generation. The stack hands each block its layer of the
cache (a forward() argument); the model sees as many blocks as it has (its forward checks the
cache's layer count), the stack and pass-throughs. The indicator is block 0's modulated input
(RMSNorm, shift and scale per token from its table and the timestep embedding), computed the
block's way. No published coefficients."""

from torch import nn

from cachekern.models.base import Adapter, Indicator, StackCall

_CACHE = "_cachekern_kv_cache"
_CAPTURING_MODES = ("capture_pre_rope", "inject_and_capture_post_rope")


class _PassThrough(nn.Module):
    """Stands for a block after the first while the stack (which ran them all) serves a call."""

    def forward(self, hidden_states, **kwargs):
        return hidden_states


class SanaWMRefinerAdapter(Adapter):
    family = "sana_wm_refiner"
    model_class = "SanaWMLTX2RefinerTransformer3DModel"
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "video_rotary_emb",
                  "encoder_attention_mask", "sink_rotary_emb", "kv_cache", "kv_cache_mode")
    batched_args = ("encoder_hidden_states", "temb", "encoder_attention_mask")
    returns = ("hidden_states",)
    forward_inputs = ("kv_cache",)
    graph_uncapturable = ("its calls carry the sliding-window KV cache, a Python object whose "
                          "layers the blocks read and which its pipeline rebuilds per window")
    stack_graph_uncapturable = graph_uncapturable

    def stand_ins(self, lists, stack, model=None):
        """As many stand-ins as blocks (its forward checks the cache's layer count against
        them): the stack, then pass-throughs."""
        count = len(model._modules[lists[0]]) if model is not None else 1
        return {lists[0]: nn.ModuleList([stack] + [_PassThrough() for _ in range(count - 1)])}

    def prefill_call(self, kwargs) -> bool:
        return kwargs.get("kv_cache_mode") in _CAPTURING_MODES

    def with_forward_inputs(self, call: StackCall, inputs: dict) -> StackCall:
        extras = dict(call.extras)
        extras[_CACHE] = inputs.get("kv_cache")     # the whole cache: block i takes layer i
        return StackCall(call.hidden, extras)

    def run_blocks(self, model, call: StackCall, blocks) -> StackCall:
        extras = dict(call.extras)
        cache = extras.pop(_CACHE, None)
        hidden = call.hidden
        for i, block in enumerate(blocks):
            layer = cache.get(i) if cache is not None else extras.get("kv_cache")
            hidden = block(hidden_states=hidden, **dict(extras, kv_cache=layer))
        extras[_CACHE] = cache
        return StackCall(hidden, extras)

    def select(self, call, index):
        if call.extras.get(_CACHE) is not None or call.extras.get("kv_cache") is not None:
            raise ValueError("TeaCache: decision='per_sample' cannot split a call that reads "
                             "SANA-WM's refiner KV cache (one cache holds the whole batch); "
                             "use decision='global'")
        sub = super().select(call, index)
        rope = call.extras.get("video_rotary_emb")
        if isinstance(rope, tuple):           # (cos, sin), batch first
            sub.extras["video_rotary_emb"] = tuple(r[index] for r in rope)
        return sub

    def indicator(self, blocks, call):
        return Indicator(embedding=self.reference_modulated_input(blocks, call))

    def reference_modulated_input(self, blocks, call):
        block = blocks[0]
        shift, scale = block.get_mod_params(block.scale_shift_table, call.extras["temb"],
                                            call.hidden.shape[0])[:2]
        return block.norm1(call.hidden) * (1 + scale) + shift
