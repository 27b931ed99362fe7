"""WanVACETransformer3DModel (Wan2.1 VACE: video editing and control): Wan's blocks, and a
second list of VACE blocks that turn the control video into hints the model adds after some of
them (``vace_layers``, layer 0 among them), each times its ``control_hidden_states_scale``.

The stack is Wan's blocks; a cached call also runs the VACE blocks inside it, so a skipped step
skips them too. The VACE blocks read only the stack's input and the control stream, so while a
cached call runs, a stand-in for them records their inputs and hands the model zero hints; the
stack runs the real ones and adds each hint where the model would (for layer 0, the model's own
addition after the stack then adds zero). The scales are a forward() argument, which the stack
reads through `forward_inputs`. Block Caching caches Wan's blocks; the VACE blocks run on every
call. The indicator is Wan's (the timestep projection); no published coefficients."""

import torch
from torch import nn

from cachekern.models.base import StackCall
from cachekern.models.joint_stream import SAMPLE_INDEX, SelectsWithIndex
from cachekern.models.wan import WanAdapter

_SCALES = "control_hidden_states_scale"
_VACE = "_cachekern_vace"


class _VaceInputs(nn.Module):
    """Stands in for one VACE block during a cached call: the first keeps the call's inputs
    (the stream, text, control stream, timestep projection and rotary table) for the stack,
    every one hands the model a zero hint and the control stream unchanged."""

    def __init__(self, blocks, index, recorded):
        super().__init__()
        object.__setattr__(self, "_blocks", blocks)      # the real VACE blocks, not submodules
        self.index = index
        object.__setattr__(self, "_recorded", recorded)

    def forward(self, hidden_states, encoder_hidden_states, control_hidden_states, temb,
                rotary_emb):
        if self.index == 0:
            self._recorded[:] = [self._blocks, hidden_states, encoder_hidden_states,
                                 control_hidden_states, temb, rotary_emb]
        return hidden_states.new_zeros(()), control_hidden_states


class _WithVace(nn.Module):
    """Stands in for the stack: calls it with what the VACE stand-ins recorded."""

    def __init__(self, stack, recorded):
        super().__init__()
        self.stack = stack
        object.__setattr__(self, "_recorded", recorded)

    def forward(self, *args, **kwargs):
        if not self._recorded:
            raise RuntimeError("cachekern: WanVACETransformer3DModel's VACE blocks were not "
                               "called before its blocks")
        recorded, self._recorded[:] = list(self._recorded), []
        return self.stack(*args, **kwargs, **{_VACE: recorded})


class WanVACEAdapter(SelectsWithIndex, WanAdapter):
    family = "wan_vace"
    model_class = "WanVACETransformer3DModel"
    forward_inputs = (_SCALES,)

    def stand_ins(self, lists, stack, model=None):
        if model is None:
            return super().stand_ins(lists, stack)
        recorded = []
        stand_ins = super().stand_ins(lists, _WithVace(stack, recorded))
        vace = model._modules["vace_blocks"]
        stand_ins["vace_blocks"] = nn.ModuleList(
            _VaceInputs(vace, i, recorded) for i in range(len(vace)))
        return stand_ins

    def run_blocks(self, model, call: StackCall, blocks) -> StackCall:
        extras = dict(call.extras)
        index = extras.pop(SAMPLE_INDEX, None)
        vace, hidden_in, text, control, temb, rope = extras.pop(_VACE)
        scales = extras.pop(_SCALES, None)
        if index is not None:     # a per-sample sub-call: its samples of the recorded inputs
            hidden_in, text, control, temb = (t[index] for t in (hidden_in, text, control, temb))
        if scales is None:
            scales = control.new_ones(len(vace))
        scales = torch.unbind(scales)
        hints = []
        for block in vace:
            hint, control = block(hidden_in, text, control, temb, rope)
            hints.append(hint)
        layers = model.config.vace_layers
        hidden = call.hidden
        for i, block in enumerate(blocks):
            hidden = block(hidden, *(extras.get(name) for name in self.block_args[1:]))
            if i in layers:
                j = list(layers).index(i)
                hidden = hidden + hints[j].to(hidden.device) * scales[j]
        return StackCall(hidden, extras)
