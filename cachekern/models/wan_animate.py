"""WanAnimateTransformer3DModel (Wan2.2 Animate: character animation from pose and face
video): Wan's blocks, and after every ``inject_face_latents_blocks``-th of them (block 0 among
them) a face adapter that adds its cross-attention to the face features.

The stack is Wan's blocks with the face adapters between them, so a skipped step skips both.
While a cached call runs, stand-ins record the face encoder's output (the stack pads it as the
model does) and hand the model a zero in place of each adapter's output, which the model adds
after the stack. The motion and face encoders, which read only the face video, run on every
call. The indicator is Wan's (the timestep projection); no published coefficients."""

import torch
from torch import nn

from cachekern.models.base import StackCall
from cachekern.models.joint_stream import SAMPLE_INDEX, Recorded, SelectsWithIndex
from cachekern.models.wan import WanAdapter

_FACE = "_cachekern_face"


class _ZeroFace(nn.Module):
    """Stands in for a face adapter during a cached call: the stack has added its output."""

    def forward(self, hidden_states, motion_vec):
        return hidden_states.new_zeros(())


class _WithFace(nn.Module):
    """Stands in for the stack: calls it with the face encoder's recorded output and the real
    face adapters (the model's attribute holds the stand-ins while the call runs)."""

    def __init__(self, stack, recorded, adapters):
        super().__init__()
        self.stack = stack
        object.__setattr__(self, "_recorded", recorded)     # not submodules
        object.__setattr__(self, "_adapters", adapters)

    def forward(self, *args, **kwargs):
        face, self._recorded.value = self._recorded.value, None
        if face is None:
            raise RuntimeError("cachekern: WanAnimateTransformer3DModel's face encoder was not "
                               "recorded before its blocks ran")
        return self.stack(*args, **kwargs, **{_FACE: (self._adapters, face)})


class WanAnimateAdapter(SelectsWithIndex, WanAdapter):
    family = "wan_animate"
    model_class = "WanAnimateTransformer3DModel"

    def stand_ins(self, lists, stack, model=None):
        if model is None:
            return super().stand_ins(lists, stack)
        face = Recorded(model._modules["face_encoder"])
        stand_ins = super().stand_ins(lists, _WithFace(stack, face,
                                                       model._modules["face_adapter"]))
        stand_ins["face_encoder"] = face
        stand_ins["face_adapter"] = nn.ModuleList(
            _ZeroFace() for _ in model._modules["face_adapter"])
        return stand_ins

    def run_blocks(self, model, call: StackCall, blocks) -> StackCall:
        extras = dict(call.extras)
        index = extras.pop(SAMPLE_INDEX, None)
        adapters, face = extras.pop(_FACE)
        if index is not None:
            face = face[index]
        motion = torch.cat([torch.zeros_like(face[:, :1]), face], dim=1)   # as the model pads it
        every = model.config.inject_face_latents_blocks
        hidden = call.hidden
        for i, block in enumerate(blocks):
            hidden = block(hidden, *(extras.get(name) for name in self.block_args[1:]))
            if i % every == 0:
                out = adapters[i // every](hidden, motion)
                hidden = out.to(device=hidden.device) + hidden
        return StackCall(hidden, extras)
