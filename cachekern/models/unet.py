"""UNet2DConditionModel (Stable Diffusion 1.x/2.x, SDXL, and UNets built like them): its down
blocks, mid block and up blocks as one stack, from the output of conv_in to the input of
conv_norm_out. Both have the same shape (block_out_channels[0] channels, the latent's size), so
the stack has a residual like a DiT's; the skip connections stay inside the stack.

The model's forward calls the stand-in in place of its first down block and finds no other
block to run; the stand-in runs the stack as the forward would (the same calls, the same
arguments). The indicator is the time embedding the blocks receive (as for Wan): there is no
AdaLN in a UNet whose modulated input could be watched. No published coefficients.
"""

from torch import nn

from cachekern.models.base import Adapter, StackCall, TimestepEmbeddingIndicator, timestep_of

# The forward's arguments a cached stack cannot serve: residuals added inside the stack.
UNCACHEABLE = ("down_block_additional_residuals", "mid_block_additional_residual",
               "down_intrablock_additional_residuals")


class UNetBlocks(list):
    """A UNet's blocks in stack order, with the three stages kept apart."""

    def __init__(self, down, mid, up):
        super().__init__(list(down) + ([mid] if mid is not None else []) + list(up))
        self.down, self.mid, self.up = list(down), mid, list(up)


class _PassThrough(nn.Module):
    """Stands in for the mid block while the stack (which ran it) returns its output."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def _cross_attention(block) -> bool:
    return bool(getattr(block, "has_cross_attention", False))


class UNet2DConditionAdapter(TimestepEmbeddingIndicator, Adapter):
    family = "unet"
    model_class = "UNet2DConditionModel"
    lists = ("down_blocks", "mid_block", "up_blocks")
    block_args = ("hidden_states", "temb", "encoder_hidden_states", "attention_mask",
                  "cross_attention_kwargs", "encoder_attention_mask")
    batched_args = ("temb", "encoder_hidden_states", "attention_mask", "encoder_attention_mask")
    uncacheable_args = UNCACHEABLE

    def block_lists(self, model):
        return [name for name in self.lists if model._modules.get(name) is not None]

    def model_blocks(self, model):
        return UNetBlocks(model.down_blocks, model.mid_block, model.up_blocks)

    def stand_ins(self, lists, stack, model=None):
        # The stack takes the first down block's place and is called as a cross-attention
        # block is (with the text states), whatever the first block is (SDXL's has none).
        stack.has_cross_attention = True
        stand_ins = {"down_blocks": nn.ModuleList([stack]), "up_blocks": nn.ModuleList()}
        if "mid_block" in lists:
            stand_ins["mid_block"] = _PassThrough()
        return stand_ins

    def timestep_of(self, args, kwargs):
        # Pipelines call a UNet as unet(latents, t, encoder_hidden_states=...).
        return timestep_of(args, kwargs)

    def run_blocks(self, model, call: StackCall, blocks) -> StackCall:
        """UNet2DConditionModel.forward from conv_in's output to conv_norm_out's input."""
        extras = call.extras
        temb = extras.get("temb")
        cross = {name: extras.get(name) for name in ("encoder_hidden_states", "attention_mask",
                                                     "cross_attention_kwargs",
                                                     "encoder_attention_mask")}
        sample = call.hidden
        # The forward passes the skip's size to an upsampler when the latent's size is not a
        # multiple of the overall upsampling factor (conv_in keeps the size).
        forward_upsample_size = any(dim % 2 ** model.num_upsamplers != 0
                                    for dim in sample.shape[-2:])
        skips = (sample,)
        for block in blocks.down:
            if _cross_attention(block):
                sample, res = block(hidden_states=sample, temb=temb, **cross)
            else:
                sample, res = block(hidden_states=sample, temb=temb)
            skips += res
        if blocks.mid is not None:
            if _cross_attention(blocks.mid):
                sample = blocks.mid(sample, temb, **cross)
            else:
                sample = blocks.mid(sample, temb)
        upsample_size = None
        for i, block in enumerate(blocks.up):
            res = skips[-len(block.resnets):]
            skips = skips[:-len(block.resnets)]
            if i < len(blocks.up) - 1 and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            if _cross_attention(block):
                sample = block(hidden_states=sample, temb=temb, res_hidden_states_tuple=res,
                               encoder_hidden_states=cross["encoder_hidden_states"],
                               cross_attention_kwargs=cross["cross_attention_kwargs"],
                               upsample_size=upsample_size,
                               attention_mask=cross["attention_mask"],
                               encoder_attention_mask=cross["encoder_attention_mask"])
            else:
                sample = block(hidden_states=sample, temb=temb, res_hidden_states_tuple=res,
                               upsample_size=upsample_size)
        return StackCall(sample, extras)

    def stack_output(self, call: StackCall):
        # What a down block returns: its output and the skips it adds (none: the stack used
        # them).
        return call.hidden, ()
