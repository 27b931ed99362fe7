"""Families whose stack is double-stream blocks, then single-stream blocks on the text and image
tokens concatenated by the model between the two lists (FLUX.2, Chroma), and whose blocks take
modulation the model computes once per call from a module outside the stack. A cached call
records that module's output (a stand-in), and the stack runs both lists itself: it hands the
model back the joint stream's text and image parts, which the model concatenates and slices
as it would have. The cached residual is the image stream's."""

import torch
from torch import nn

from cachekern.models.base import Adapter, StackCall

SAMPLE_INDEX = "_cachekern_samples"     # the samples a per-sample sub-call runs


class SelectsWithIndex:
    """Adapter mixin for stacks that index state recorded outside the call (a stand-in's
    output) by sample: a per-sample sub-call carries its samples as SAMPLE_INDEX, which
    run_blocks pops."""

    def select(self, call, index):
        sub = super().select(call, index)
        sub.extras[SAMPLE_INDEX] = index
        return sub


class Recorded(nn.Module):
    """Stands in for a module during a cached call and keeps its last output."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.value = None

    def forward(self, *args, **kwargs):
        self.value = self.module(*args, **kwargs)
        return self.value


def is_single(block) -> bool:
    return type(block).__name__.endswith("SingleTransformerBlock")


class JointStreamAdapter(SelectsWithIndex, Adapter):
    lists = ("transformer_blocks", "single_transformer_blocks")
    recorded: str = ""             # the module whose output the blocks' modulation comes from
    list_returns = {"single_transformer_blocks": ("hidden_states",)}

    def stand_ins(self, lists, stack, model=None):
        stand_ins = super().stand_ins(lists, stack)
        if model is not None:
            stand_ins[self.recorded] = Recorded(model._modules[self.recorded])
        return stand_ins

    def double_kwargs(self, i, counts, extras, recorded):
        """The keyword arguments of double block i besides the two streams."""
        raise NotImplementedError

    def single_kwargs(self, i, counts, extras, recorded):
        """The keyword arguments of single block i besides the joint stream."""
        raise NotImplementedError

    def run_blocks(self, model, call: StackCall, blocks) -> StackCall:
        extras = dict(call.extras)
        index = extras.pop(SAMPLE_INDEX, None)
        stand_in = model._modules.get(self.recorded)
        if not isinstance(stand_in, Recorded) or stand_in.value is None:
            raise RuntimeError(f"cachekern: {self.model_class}'s {self.recorded} was not "
                               f"recorded before the blocks ran")
        recorded = stand_in.value if index is None else stand_in.value[index]
        doubles = [b for b in blocks if not is_single(b)]
        singles = [b for b in blocks if is_single(b)]
        counts = (len(doubles), len(singles))
        hidden, text = call.hidden, extras["encoder_hidden_states"]
        for i, block in enumerate(doubles):
            text, hidden = block(hidden_states=hidden, encoder_hidden_states=text,
                                 **self.double_kwargs(i, counts, extras, recorded))
        joint = torch.cat([text, hidden], dim=1)
        for i, block in enumerate(singles):
            joint = block(hidden_states=joint, **self.single_kwargs(i, counts, extras, recorded))
        n_text = text.shape[1]
        extras["encoder_hidden_states"] = joint[:, :n_text]
        return StackCall(joint[:, n_text:], extras)
