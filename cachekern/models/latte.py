"""LatteTransformer3DModel (Latte, text to video): PixArt's blocks ("ada_norm_single"), in pairs:
a spatial block over each frame's tokens, then, reshaped, a temporal block over each token's
frames (the first temporal block's input gets the frames' positional table).

The model runs both lists in one loop with the reshapes between them, so the stack stands where
spatial block 0 was and runs every pair, reshapes and positional table included; a stand-in for
temporal block 0 hands the model back the stack's output (laid out for the model's reshape
back), and the other pairs are gone from the loop. The cached stream is laid out per sample,
[batch, frames × tokens, channels] (a view of the blocks' [batch × frames, tokens, channels]), so
that a per-sample decision keeps a video's frames together; the frame count and whether the
temporal blocks run come from the forward's own arguments. The indicator is spatial block 0's
modulated norm1 (PixArt's), one shift and scale per video. Block Caching caches every spatial
and temporal block. No published coefficients."""

import torch
from torch import nn

from cachekern.models.base import Indicator, StackCall
from cachekern.models.basic_block import BasicBlockAdapter, plain_layer_norm

_LAYOUT = "_cachekern_latte"       # (frames, temporal blocks run) of the call


class _RecordsOutput(nn.Module):
    """Stands for spatial block 0: runs the stack and keeps its output for the stand-in of
    temporal block 0."""

    def __init__(self, stack, kept):
        super().__init__()
        self.stack = stack
        object.__setattr__(self, "_kept", kept)

    def forward(self, *args, **kwargs):
        out = self.stack(*args, **kwargs)
        self._kept[:] = [out]
        return out


class _ReturnsOutput(nn.Module):
    """Stands for temporal block 0: returns the stack's output laid out as a temporal block's
    ([batch × tokens, frames, channels]), so that the model's reshape back gives it exactly;
    what the model computed on the way here is dropped."""

    def __init__(self, kept):
        super().__init__()
        object.__setattr__(self, "_kept", kept)

    def forward(self, hidden_states, *args):
        if not self._kept:
            raise RuntimeError("cachekern: LatteTransformer3DModel called its temporal block "
                               "before its spatial one")
        out = self._kept.pop()
        frames, tokens, channels = hidden_states.shape[1], out.shape[1], out.shape[2]
        return out.reshape(-1, frames, tokens, channels).permute(0, 2, 1, 3).reshape(
            -1, frames, channels)


class LatteAdapter(BasicBlockAdapter):
    family = "latte"
    model_class = "LatteTransformer3DModel"
    lists = ("transformer_blocks", "temporal_transformer_blocks")
    call_by_keyword = False
    forward_inputs = ("hidden_states", "enable_temporal_attentions")
    # The blocks' per-frame arguments ([batch × frames, ...]); the attention mask is the call's
    # own, per video.
    frame_args = ("encoder_hidden_states", "timestep")

    def stand_ins(self, lists, stack, model=None):
        kept = []
        return {lists[0]: nn.ModuleList([_RecordsOutput(stack, kept)]),
                lists[1]: nn.ModuleList([_ReturnsOutput(kept)])}

    def with_forward_inputs(self, call: StackCall, inputs: dict) -> StackCall:
        latents, temporal = inputs["hidden_states"], inputs["enable_temporal_attentions"]
        frames = latents.shape[2]
        extras = dict(call.extras)
        extras[_LAYOUT] = (frames, temporal is None or bool(temporal))
        hidden = call.hidden
        return StackCall(hidden.reshape(hidden.shape[0] // frames, -1, hidden.shape[-1]), extras)

    def _per_video_shift_scale(self, block, call):
        frames = call.extras[_LAYOUT][0]
        batch = call.hidden.shape[0]
        timestep = call.extras["timestep"].reshape(batch, frames, -1)[:, 0]
        table = block.scale_shift_table[None] + timestep.reshape(batch, 6, -1)
        shift, scale = table.chunk(6, dim=1)[:2]
        return shift.squeeze(1), scale.squeeze(1)

    def indicator(self, blocks, call):
        norm = plain_layer_norm(blocks[0].norm1, self.model_class)
        shift, scale = self._per_video_shift_scale(blocks[0], call)
        return Indicator(scale, shift, "layer", norm.eps)

    def reference_modulated_input(self, blocks, call):
        shift, scale = self._per_video_shift_scale(blocks[0], call)
        return blocks[0].norm1(call.hidden) * (1 + scale[:, None]) + shift[:, None]

    def select(self, call: StackCall, index: torch.Tensor) -> StackCall:
        frames = call.extras[_LAYOUT][0]
        rows = (index[:, None] * frames + torch.arange(frames, device=index.device)).reshape(-1)
        extras = dict(call.extras)
        for name in self.frame_args:
            if isinstance(extras.get(name), torch.Tensor):
                extras[name] = extras[name][rows]
        mask = extras.get("encoder_attention_mask")
        if isinstance(mask, torch.Tensor) and mask.shape[0] == call.hidden.shape[0]:
            extras["encoder_attention_mask"] = mask[index]
        return StackCall(call.hidden[index], extras)

    def run_blocks(self, model, call: StackCall, blocks) -> StackCall:
        """The model's loop over its (spatial, temporal) pairs, with its reshapes."""
        frames, temporal = call.extras[_LAYOUT]
        batch, channels = call.hidden.shape[0], call.hidden.shape[-1]
        text, mask, timestep = (call.extras.get(name) for name in
                                ("encoder_hidden_states", "encoder_attention_mask", "timestep"))
        hidden = call.hidden.reshape(batch * frames, -1, channels)
        tokens = hidden.shape[1]
        per_video = timestep.reshape(batch, frames, -1)[:, 0]
        timestep_temporal = per_video.repeat_interleave(tokens, dim=0).view(
            -1, per_video.shape[-1])
        pairs = len(blocks) // 2
        for i, (spatial, temporal_block) in enumerate(zip(blocks[:pairs], blocks[pairs:])):
            hidden = spatial(hidden, None, text, mask, timestep, None, None)
            if not temporal:
                continue
            hidden = hidden.reshape(batch, -1, tokens, channels).permute(0, 2, 1, 3)
            hidden = hidden.reshape(-1, frames, channels)
            if i == 0 and frames > 1:
                hidden = hidden + model.temp_pos_embed.to(hidden.dtype)
            hidden = temporal_block(hidden, None, None, None, timestep_temporal, None, None)
            hidden = hidden.reshape(batch, -1, frames, channels).permute(0, 2, 1, 3)
            hidden = hidden.reshape(-1, tokens, channels)
        return StackCall(hidden.reshape(batch, -1, channels), dict(call.extras))

    def stack_output(self, call: StackCall):
        frames = call.extras[_LAYOUT][0]
        hidden = call.hidden
        return hidden.reshape(hidden.shape[0] * frames, -1, hidden.shape[-1])
