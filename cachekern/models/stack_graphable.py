"""What a CUDA graph of the block stack alone needs (for families whose forward reads the host
outside its blocks, so only the stack can be captured): the stack call as one flat dict of
inputs a graph is keyed and captured on, the call rebuilt from the graph's static copies, and
the graph's output handed back as the caller may keep it."""

import torch
import torch.utils._pytree as pytree

from cachekern.models.base import StackCall
from cachekern.models.graphable import PLAIN_VALUES, on_one_gpu

_HIDDEN = "_cachekern_stack_hidden"
_TIMESTEP = "_cachekern_stack_timestep"
_PLAIN = PLAIN_VALUES + (torch.dtype, torch.device)     # blocks take dtypes too


def stack_inputs(call: StackCall, timestep=None):
    """The stack call's inputs (and the timestep, for a graph that reads it) as one flat dict,
    or None when a graph cannot replay them: an object other than tensors and plain values
    (such as a KV cache), a tensor off the stream's GPU, or a timestep to read that is no
    tensor."""
    inputs = dict(call.extras)
    inputs[_HIDDEN] = call.hidden
    if timestep is not None:
        if not isinstance(timestep, torch.Tensor):
            return None
        inputs[_TIMESTEP] = timestep
    if not on_one_gpu(inputs) or not all(isinstance(leaf, (torch.Tensor,) + _PLAIN)
                                         for leaf in pytree.tree_leaves(inputs)):
        return None
    return inputs


def stack_call_of(static) -> StackCall:
    """The stack call made of a graph's static inputs."""
    extras = {k: v for k, v in static.items() if k not in (_HIDDEN, _TIMESTEP)}
    return StackCall(static[_HIDDEN], extras)


def timestep_of_inputs(static):
    return static[_TIMESTEP]


def served_stack(output: StackCall, static, inputs) -> StackCall:
    """The graph's output stack call as the caller gets it: clones of what the graph wrote (its
    next replay overwrites them), and the call's own objects for what it passed through."""
    served = {}
    for name, value in output.extras.items():
        if name in static and value is static[name]:
            served[name] = inputs[name]
        else:
            served[name] = pytree.tree_map_only(torch.Tensor, torch.clone, value)
    return StackCall(output.hidden.clone(), served)
