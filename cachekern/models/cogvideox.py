"""CogVideoXTransformer3DModel: its blocks as one stack. The indicator is the timestep embedding
(as in the published CogVideoX scripts); the cached residual is the video tokens' (after the
blocks the model keeps only them: the text stream passes a skipped step unchanged)."""

from cachekern.models.base import Adapter, TimestepEmbeddingIndicator


class CogVideoXAdapter(TimestepEmbeddingIndicator, Adapter):
    family = "cogvideox"
    model_class = "CogVideoXTransformer3DModel"
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "image_rotary_emb",
                  "attention_kwargs")
    returns = ("hidden_states", "encoder_hidden_states")
