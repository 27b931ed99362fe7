"""Flux2Transformer2DModel (FLUX.2): double-stream blocks, then single-stream blocks, one stack
(cachekern.models.joint_stream). The double blocks get the call's modulation vectors as
arguments; the single blocks' come from ``single_stream_modulation``, recorded from the call.
The indicator is double block 0's modulated image input (LayerNorm without affine; shift and
scale, the first two chunks of ``temb_mod_img``). Calls with a reference-token KV cache run
uncached. No published TeaCache polynomial."""

from cachekern.models.base import Indicator
from cachekern.models.joint_stream import JointStreamAdapter


class Flux2Adapter(JointStreamAdapter):
    family = "flux2"
    model_class = "Flux2Transformer2DModel"
    recorded = "single_stream_modulation"
    block_args = ("hidden_states", "encoder_hidden_states", "temb_mod_img", "temb_mod_txt",
                  "image_rotary_emb", "joint_attention_kwargs")
    batched_args = ("encoder_hidden_states", "temb_mod_img", "temb_mod_txt")
    uncacheable_args = ("kv_cache", "kv_cache_mode")
    list_block_args = {"single_transformer_blocks": (
        "hidden_states", "encoder_hidden_states", "temb_mod", "image_rotary_emb",
        "joint_attention_kwargs", "split_hidden_states", "text_seq_len")}

    def _shift_scale(self, call):
        return call.extras["temb_mod_img"].chunk(6, dim=-1)[:2]

    def indicator(self, blocks, call):
        shift, scale = self._shift_scale(call)
        return Indicator(scale, shift, "layer", blocks[0].norm1.eps)

    def reference_modulated_input(self, blocks, call):
        shift, scale = self._shift_scale(call)
        return (1 + scale[:, None]) * blocks[0].norm1(call.hidden) + shift[:, None]

    def double_kwargs(self, i, counts, extras, recorded):
        return dict(temb_mod_img=extras["temb_mod_img"], temb_mod_txt=extras["temb_mod_txt"],
                    image_rotary_emb=extras.get("image_rotary_emb"),
                    joint_attention_kwargs=extras.get("joint_attention_kwargs"))

    def single_kwargs(self, i, counts, extras, recorded):
        return dict(encoder_hidden_states=None, temb_mod=recorded,
                    image_rotary_emb=extras.get("image_rotary_emb"),
                    joint_attention_kwargs=extras.get("joint_attention_kwargs"))
