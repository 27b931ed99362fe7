"""TeaCache(cuda_graphs=True) for families whose forward reads the host outside its blocks
(cachekern.models.Adapter.graph_uncapturable: a rotary table built on the host, text lengths
read from a mask): the forward runs eagerly, as the model's own code needs, and the cached stack
inside it runs as one CUDA graph per CFG branch and stack signature: the indicator, the decision
on the device, then the blocks or the cached residual (TeaCacheRuntime.graph_capture, the
whole-forward graph's stack part). TeaCache adds no host synchronisation of its own; the
model's forward makes the ones it makes uncached.

The graph is captured over static copies of the stack's inputs (the stream, every tensor the
blocks take, the timestep the decision reads); a replay copies the call's tensors in and hands
back clones of what the graph wrote, and the call's own objects for what it passed through."""

import torch
import torch.utils._pytree as pytree

from cachekern.models.base import StackCall
from cachekern.models.graphable import PLAIN_VALUES, copy_into, on_one_gpu
from cachekern.teacache.graphs import GraphedStep

_HIDDEN = "_cachekern_stack_hidden"
_TIMESTEP = "_cachekern_stack_timestep"
_PLAIN = PLAIN_VALUES + (torch.dtype, torch.device)     # blocks take dtypes too


def stack_inputs(call: StackCall, timestep):
    """The stack call's inputs as one flat dict a graph can be keyed and captured on, or None
    when a graph cannot replay them (an object other than tensors and plain values, such as a
    KV cache, a tensor off the stream's GPU, or a timestep that is no tensor)."""
    if not isinstance(timestep, torch.Tensor):
        return None
    inputs = dict(call.extras)
    inputs[_HIDDEN], inputs[_TIMESTEP] = call.hidden, timestep
    if not on_one_gpu(inputs) or not all(isinstance(leaf, (torch.Tensor,) + _PLAIN)
                                         for leaf in pytree.tree_leaves(inputs)):
        return None
    return inputs


def _stack_call(static):
    extras = {k: v for k, v in static.items() if k not in (_HIDDEN, _TIMESTEP)}
    return StackCall(static[_HIDDEN], extras)


class StackGraph(GraphedStep):
    """One branch's captured stack. `run(stack_call, timestep, run_if)` is the runtime's capture
    (run_if None: its warm-up), on the static call."""

    def __init__(self, key, inputs, decision, run):
        super().__init__(key, inputs, decision,
                         capture_forward=lambda static, run_if: self._unpack(
                             run(_stack_call(static), static[_TIMESTEP], run_if)),
                         warm_up=lambda static: run(_stack_call(static), static[_TIMESTEP],
                                                    None))

    @staticmethod
    def _unpack(out: StackCall):
        return out.hidden, out.extras

    def replay(self, inputs):
        copy_into(self.static, inputs)
        self.graph.replay()
        hidden, extras = self.output
        served = {}
        for name, value in extras.items():
            if name in self.static and value is self.static[name]:
                served[name] = inputs[name]          # passed through: the caller's own
            else:                                    # written by the graph: its next replay
                served[name] = pytree.tree_map_only(torch.Tensor, torch.clone, value)
        return StackCall(hidden.clone(), served)
