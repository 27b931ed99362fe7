"""Block Caching's model calls as CUDA graphs (BlockCaching(cuda_graphs=True)): one graph per
CFG branch and step of the static schedule, captured the first time that step comes round after
one generation ran eagerly (which sized every residual buffer the step reads or writes; they are
written in place from then on), and replayed from then on. Which blocks compute is fixed by the
step, so a graph holds exactly the kernels the eager call would launch, on the same buffers: the
replay gives the eager call's output bit for bit, for one launch.

For a family whose forward reads the host outside its blocks (Adapter.graph_uncapturable), the
forward runs eagerly and only the block stack is captured, the same way (CapturedStack)."""

import torch

from cachekern.models.graphable import clone_output, copy_into, static_copy
from cachekern.models.stack_graphable import served_stack, stack_call_of


class CapturedCall:
    """One model call captured over static copies of its inputs. `run(static_inputs)` makes the
    call (inside the capture: only its Python runs, no kernel)."""

    def __init__(self, inputs, run, pool):
        self.static = static_copy(inputs)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = run(self.static)

    def replay(self, inputs):
        copy_into(self.static, inputs)
        self.graph.replay()
        return clone_output(self.output)    # the next replay overwrites the graph's own

    def release(self):
        self.graph.reset()


class CapturedStack(CapturedCall):
    """One block stack call captured over static copies of its inputs
    (cachekern.models.stack_graphable). `run(stack_call)` runs the blocks."""

    def __init__(self, inputs, run, pool):
        super().__init__(inputs, lambda static: run(stack_call_of(static)), pool)

    def replay(self, inputs):
        copy_into(self.static, inputs)
        self.graph.replay()
        return served_stack(self.output, self.static, inputs)
