"""SanaTransformer2DModel: linear-attention blocks modulated as PixArt's ("ada_norm_single": shift
and scale from the block's learned table plus the embedded timestep), called positionally. The
indicator is block 0's modulated norm1 output; ControlNet residuals, added between blocks, make
a call uncacheable."""

from cachekern.models.base import Adapter
from cachekern.models.basic_block import AdaNormSingleIndicator


class SanaAdapter(AdaNormSingleIndicator, Adapter):
    family = "sana"
    model_class = "SanaTransformer2DModel"
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "attention_mask", "encoder_hidden_states",
                  "encoder_attention_mask", "timestep", "height", "width")
    batched_args = ("attention_mask", "encoder_hidden_states", "encoder_attention_mask",
                    "timestep")
    call_by_keyword = False
    returns = ("hidden_states",)
    uncacheable_args = ("controlnet_block_samples",)
