"""HiDreamImageTransformer2DModel (HiDream-I1): double-stream blocks, then single-stream blocks,
one stack. Each block also takes its own Llama layer's text states: the model projects them
(``caption_projection[i]``) before the blocks run, and concatenates them, block by block, to the
text stream (double blocks) or the joint stream (single blocks), cutting each block's output
back afterwards. A cached call records those projections (stand-ins) and the stack runs both
lists as the model's loops would; it hands back the final image tokens, which the model's own
concatenation and slicing then leave as they are.

The indicator is TeaCache4HiDream's: the timestep embedding ``t_embedder`` computes (before the
pooled text embedding is added to it), recorded from the call and handed to the stack by the
stand-in for double block 0; its published polynomial (HiDream-I1-Full) applies. Its
mixture-of-experts feed-forward reads expert counts on the host, so its forward cannot be
captured as a graph."""

import torch
from torch import nn

from cachekern.models.base import Adapter, Indicator, StackCall
from cachekern.models.joint_stream import SAMPLE_INDEX, Recorded, SelectsWithIndex

_PROJECTIONS = "caption_projection"
_TIMESTEP_EMBEDDING = "_cachekern_timestep_embedding"


class _WithTimestepEmbedding(nn.Module):
    """Stands in for double block 0: calls the cached stack with this call's timestep
    embedding, recorded from t_embedder (TeaCache's indicator for the family)."""

    def __init__(self, stack, recorded):
        super().__init__()
        self.stack = stack
        self.recorded = recorded

    def forward(self, *args, **kwargs):
        if self.recorded.value is None:
            raise RuntimeError("cachekern: HiDreamImageTransformer2DModel's t_embedder was "
                               "not recorded before the blocks ran")
        return self.stack(*args, **kwargs, **{_TIMESTEP_EMBEDDING: self.recorded.value})


def _inner(block):
    """The transformer block inside diffusers' HiDreamBlock wrapper."""
    return getattr(block, "block", block)


class HiDreamAdapter(SelectsWithIndex, Adapter):
    family = "hidream"
    model_class = "HiDreamImageTransformer2DModel"
    timestep_arg = "timesteps"
    lists = ("double_stream_blocks", "single_stream_blocks")
    block_args = ("hidden_states", "hidden_states_masks", "encoder_hidden_states", "temb",
                  "image_rotary_emb")
    batched_args = ("hidden_states_masks", "encoder_hidden_states", "temb", "image_rotary_emb",
                    _TIMESTEP_EMBEDDING)
    returns = ("hidden_states", "encoder_hidden_states")
    list_returns = {"single_stream_blocks": ("hidden_states",)}
    graph_uncapturable = ("its mixture-of-experts feed-forward copies the tokens per expert to "
                          "the host (.cpu()) in every block")
    stack_graph_uncapturable = graph_uncapturable

    def select(self, call, index):
        raise ValueError("TeaCache: decision='per_sample' cannot split HiDream's call (its "
                         "double blocks hand the single blocks text states laid out for the "
                         "whole batch); use decision='global'")

    def stand_ins(self, lists, stack, model=None):
        if model is None:
            return super().stand_ins(lists, stack)
        timestep = Recorded(model._modules["t_embedder"])
        stand_ins = super().stand_ins(lists, _WithTimestepEmbedding(stack, timestep))
        stand_ins["t_embedder"] = timestep
        stand_ins[_PROJECTIONS] = nn.ModuleList(
            Recorded(projection) for projection in model._modules[_PROJECTIONS])
        return stand_ins

    def indicator(self, blocks, call):
        return Indicator(embedding=call.extras[_TIMESTEP_EMBEDDING])

    def reference_modulated_input(self, blocks, call):
        return call.extras[_TIMESTEP_EMBEDDING]

    def _llama_states(self, model, batch, width, index):
        """Each block's projected Llama text states, as the model's forward viewed them."""
        recorded = model._modules.get(_PROJECTIONS)
        if not isinstance(recorded, nn.ModuleList) or \
                not all(isinstance(r, Recorded) and r.value is not None for r in recorded):
            raise RuntimeError("cachekern: HiDreamImageTransformer2DModel's caption "
                               "projections were not recorded before the blocks ran")
        # The last projection is T5's, already inside the text stream.
        states = [r.value.view(r.value.shape[0], -1, width) for r in list(recorded)[:-1]]
        return states if index is None else [s[index] for s in states]

    def run_blocks(self, model, call: StackCall, blocks) -> StackCall:
        extras = dict(call.extras)
        index = extras.pop(SAMPLE_INDEX, None)
        hidden = call.hidden
        llama = self._llama_states(model, hidden.shape[0], hidden.shape[-1], index)
        doubles = [b for b in blocks if type(_inner(b)).__name__ ==
                   "HiDreamImageTransformerBlock"]
        singles = blocks[len(doubles):]
        masks, temb, rope = (extras.get(name) for name in
                             ("hidden_states_masks", "temb", "image_rotary_emb"))
        first_text = extras["encoder_hidden_states"]     # the text stream, then Llama layer 0
        text_length = first_text.shape[1] - llama[0].shape[1]
        text = first_text[:, :text_length]
        for i, block in enumerate(doubles):
            current = first_text if i == 0 else torch.cat([text, llama[i]], dim=1)
            hidden, text = block(hidden_states=hidden, hidden_states_masks=masks,
                                 encoder_hidden_states=current, temb=temb,
                                 image_rotary_emb=rope)
            text = text[:, :text_length]
        image_length = hidden.shape[1]
        joint = torch.cat([hidden, text], dim=1)
        joint_length = joint.shape[1]
        if masks is not None and singles:
            ones = torch.ones((masks.shape[0], text.shape[1] + llama[len(doubles) - 1].shape[1]),
                              device=masks.device, dtype=masks.dtype)
            masks = torch.cat([masks, ones], dim=1)
        for j, block in enumerate(singles):
            joint = torch.cat([joint, llama[len(doubles) + j]], dim=1)
            joint = block(hidden_states=joint, hidden_states_masks=masks,
                          encoder_hidden_states=None, temb=temb, image_rotary_emb=rope)
            joint = joint[:, :joint_length]
        extras["encoder_hidden_states"] = joint[:, image_length:]
        return StackCall(joint[:, :image_length], extras)
