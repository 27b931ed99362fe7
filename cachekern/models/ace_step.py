"""AceStepTransformer1DModel (ACE-Step 1.5, music): its layers as one stack, called by keyword;
the cached residual is the audio stream's. Sliding-window and full-attention layers alternate
(``layer_types``): the model hands layer 0 its mask, and the stack gives the sliding window's
to the sliding layers only, as the model's loop does. The indicator is the timestep projection
the layers receive (the sum of the t and t − r paths'). No published coefficients."""

import sys

from cachekern.models.base import Adapter, StackCall, TimestepEmbeddingIndicator


class AceStepAdapter(TimestepEmbeddingIndicator, Adapter):
    family = "ace_step"
    model_class = "AceStepTransformer1DModel"
    lists = ("layers",)
    block_args = ("hidden_states", "position_embeddings", "temb", "attention_mask",
                  "encoder_hidden_states", "encoder_attention_mask")
    batched_args = ("temb", "encoder_hidden_states")
    returns = ("hidden_states",)

    def run_blocks(self, model, call: StackCall, blocks) -> StackCall:
        extras = dict(call.extras)
        sliding = extras.pop("attention_mask", None)
        hidden = call.hidden
        if model.layer_types[0] != "sliding_attention":     # layer 0 was given no mask
            sliding = self._sliding_mask(model, blocks, hidden)
        for kind, block in zip(model.layer_types, blocks):
            mask = sliding if kind == "sliding_attention" else None
            hidden = block(hidden_states=hidden, attention_mask=mask, **extras)
        return StackCall(hidden, dict(extras, attention_mask=sliding))

    @staticmethod
    def _sliding_mask(model, blocks, hidden):
        """The sliding window's mask, built as the model's forward builds it."""
        source = sys.modules[type(model).__module__]
        if source._is_flash_attention_backend(blocks[0].self_attn.processor):
            return None
        return source._create_4d_mask(seq_len=hidden.shape[1], dtype=hidden.dtype,
                                      device=hidden.device,
                                      sliding_window=model.config.sliding_window,
                                      is_sliding_window=True, is_causal=False)
