"""TeaCache(cuda_graphs=True) for families whose forward reads the host outside its blocks
(cachekern.models.Adapter.graph_uncapturable: a rotary table built on the host, text lengths
read from a mask): the forward runs eagerly, as the model's own code needs, and the cached stack
inside it runs as one CUDA graph per CFG branch and stack signature: the indicator, the decision
on the device, then the blocks or the cached residual (TeaCacheRuntime.graph_capture, the
whole-forward graph's stack part). TeaCache adds no host synchronisation of its own; the
model's forward makes the ones it makes uncached. The graph is captured over static copies of
the stack's inputs (cachekern.models.stack_graphable)."""

from cachekern.models.stack_graphable import (served_stack, stack_call_of, timestep_of_inputs)
from cachekern.models.graphable import copy_into
from cachekern.teacache.graphs import GraphedStep


class StackGraph(GraphedStep):
    """One branch's captured stack. `run(stack_call, timestep, run_if)` is the runtime's capture
    (run_if None: its warm-up), on the static call."""

    def __init__(self, key, inputs, decision, run):
        super().__init__(key, inputs, decision,
                         capture_forward=lambda static, run_if: run(
                             stack_call_of(static), timestep_of_inputs(static), run_if),
                         warm_up=lambda static: run(stack_call_of(static),
                                                    timestep_of_inputs(static), None))

    def replay(self, inputs):
        copy_into(self.static, inputs)
        self.graph.replay()
        return served_stack(self.output, self.static, inputs)
