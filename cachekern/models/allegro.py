"""AllegroTransformer3DModel (Allegro, text to video): PixArt's adaLN-single modulation in its
own block class, called with keywords, the embedded timestep as `temb`. The indicator is block
0's modulated norm1 output; the stack is the model's transformer_blocks. No published
coefficients."""

from cachekern.models.base import Adapter
from cachekern.models.basic_block import AdaNormSingleIndicator


class AllegroAdapter(AdaNormSingleIndicator, Adapter):
    family = "allegro"
    model_class = "AllegroTransformer3DModel"
    embedding_arg = "temb"
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "attention_mask",
                  "encoder_attention_mask", "image_rotary_emb")
    batched_args = ("encoder_hidden_states", "temb", "attention_mask", "encoder_attention_mask")
    returns = ("hidden_states",)
