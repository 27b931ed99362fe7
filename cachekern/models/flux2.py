"""Flux2Transformer2DModel (FLUX.2): double-stream blocks, then single-stream blocks on the text
and image tokens concatenated, one stack. The blocks do not take the timestep embedding but
modulation vectors the model computes once per call: the double blocks get theirs as
arguments, the single blocks' come from ``single_stream_modulation``, which a cached call
records (a stand-in module) so that the stack can run the single blocks itself. The indicator
is double block 0's modulated image input (LayerNorm without affine; shift and scale, the first
two chunks of ``temb_mod_img``); the cached residual is the image stream's. Calls with a
reference-token KV cache run uncached. No published TeaCache polynomial."""

import torch
from torch import nn

from cachekern.models.base import Adapter, Indicator, StackCall

_INDEX = "_cachekern_samples"     # the samples a per-sample sub-call runs (see select)


class _Recorded(nn.Module):
    """Stands in for a module during a cached call and keeps its last output."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.value = None

    def forward(self, *args, **kwargs):
        self.value = self.module(*args, **kwargs)
        return self.value


def _is_single(block) -> bool:
    return type(block).__name__.endswith("SingleTransformerBlock")


class Flux2Adapter(Adapter):
    family = "flux2"
    model_class = "Flux2Transformer2DModel"
    lists = ("transformer_blocks", "single_transformer_blocks")
    block_args = ("hidden_states", "encoder_hidden_states", "temb_mod_img", "temb_mod_txt",
                  "image_rotary_emb", "joint_attention_kwargs")
    batched_args = ("encoder_hidden_states", "temb_mod_img", "temb_mod_txt")
    uncacheable_args = ("kv_cache", "kv_cache_mode")
    # Block Caching wraps each block: the single blocks take and return other streams.
    list_block_args = {"single_transformer_blocks": (
        "hidden_states", "encoder_hidden_states", "temb_mod", "image_rotary_emb",
        "joint_attention_kwargs", "split_hidden_states", "text_seq_len")}
    list_returns = {"single_transformer_blocks": ("hidden_states",)}

    def stand_ins(self, lists, stack, model=None):
        stand_ins = super().stand_ins(lists, stack)
        if model is not None:
            stand_ins["single_stream_modulation"] = _Recorded(model.single_stream_modulation)
        return stand_ins

    def indicator(self, blocks, call):
        shift, scale = call.extras["temb_mod_img"].chunk(6, dim=-1)[:2]
        return Indicator(scale, shift, "layer", blocks[0].norm1.eps)

    def reference_modulated_input(self, blocks, call):
        shift, scale = call.extras["temb_mod_img"].chunk(6, dim=-1)[:2]
        norm = blocks[0].norm1(call.hidden)
        return (1 + scale[:, None]) * norm + shift[:, None]

    def select(self, call, index):
        sub = super().select(call, index)
        sub.extras[_INDEX] = index
        return sub

    def run_blocks(self, model, call: StackCall, blocks) -> StackCall:
        extras = dict(call.extras)
        index = extras.pop(_INDEX, None)
        recorded = model._modules.get("single_stream_modulation")
        if not isinstance(recorded, _Recorded) or recorded.value is None:
            raise RuntimeError("cachekern: Flux2's single-stream modulation was not recorded "
                               "before the blocks ran")
        single_mod = recorded.value if index is None else recorded.value[index]
        hidden, text = call.hidden, extras["encoder_hidden_states"]
        for block in blocks:
            if _is_single(block):
                continue
            text, hidden = block(hidden_states=hidden, encoder_hidden_states=text,
                                 temb_mod_img=extras["temb_mod_img"],
                                 temb_mod_txt=extras["temb_mod_txt"],
                                 image_rotary_emb=extras.get("image_rotary_emb"),
                                 joint_attention_kwargs=extras.get("joint_attention_kwargs"))
        joint = torch.cat([text, hidden], dim=1)
        for block in blocks:
            if _is_single(block):
                joint = block(hidden_states=joint, encoder_hidden_states=None,
                              temb_mod=single_mod,
                              image_rotary_emb=extras.get("image_rotary_emb"),
                              joint_attention_kwargs=extras.get("joint_attention_kwargs"))
        # The model concatenates the two streams after its (now empty) double loop and keeps
        # the image tokens after its (empty) single loop: hand back the joint stream's parts.
        n_text = text.shape[1]
        extras["encoder_hidden_states"] = joint[:, :n_text]
        return StackCall(joint[:, n_text:], extras)
