"""TeaCache's call as two CUDA graphs around its one host read (TeaCache(cuda_graphs=True)).

A skipped call needs little: the model's pre-stack work that the cached stream and block 0's
modulation depend on, the indicator and the fused decision kernel (graph A), then, when the
decision is to skip, residual_reuse and the model's tail (graph B). Run eagerly through the
model's forward, that is ~40 kernel launches and the model's Python around them, host time that
dominates a skipped step at FLUX size; replayed from graphs it is two launches
(benchmarks/RESULTS.md). When the decision is to compute, the caller runs the model's forward
eagerly with the decision already made.

Graphs read and write fixed memory, so they are captured per CFG branch over static copies of
the call's inputs and over the branch's own state buffers (the previous modulated input, which
graph A overwrites as the eager path does, and the cached residual); a change of input shapes
or of those buffers (a new generation reallocates the residual) captures them again.
"""

import torch


class GraphedSkip:
    def __init__(self, adapter, model, blocks, kernels, state, inputs, decision_inputs):
        self.key = self.key_of(inputs, state)
        self.static = {name: t.detach().clone() for name, t in inputs.items()}
        prev, residual = state.prev, state.residual

        def part_a(prev_out):
            call = adapter.pre_stack(model, self.static)
            ind = adapter.indicator(blocks, call)
            sums = kernels.modulated_distance(call.hidden, prev_out, ind.scale, ind.shift,
                                              norm=ind.norm, eps=ind.eps,
                                              out_modulated=prev_out)
            return call, decision_inputs(self.static["timestep"], sums, call.hidden.device)

        def part_b(call):
            hidden = kernels.residual_reuse(call.hidden, residual)
            return adapter.tail(model, hidden, call)

        with torch.cuda.device(prev.device):
            self._capture(part_a, part_b, prev)
        # What the graphs read and write must outlive them.
        self.state_buffers = (prev, residual)

    def _capture(self, part_a, part_b, prev):
        # Warm-up outside the capture (kernels compiled, libraries' lazy set-up done), on a
        # scratch copy of prev: the branch's state must not move.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            call, _ = part_a(prev.clone())
            part_b(call)
        torch.cuda.current_stream().wait_stream(side)
        self.graph_a, self.graph_b = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph_a):
            self.call, self.values = part_a(prev)
        with torch.cuda.graph(self.graph_b):
            self.output = part_b(self.call)

    @staticmethod
    def key_of(inputs, state):
        return (tuple((name, tuple(t.shape), t.dtype, t.device)
                      for name, t in sorted(inputs.items())),
                state.prev.data_ptr(), state.residual.data_ptr())

    def read(self, inputs):
        """Replays graph A on this call's inputs; returns what the decision reads: [timestep,
        per-sample diff sums, per-sample prev sums], with the call's one synchronisation."""
        for name, t in inputs.items():
            self.static[name].copy_(t)
        self.graph_a.replay()
        return self.values.tolist()

    def skip(self):
        """Replays graph B; returns a fresh copy of the model's output (the next call
        overwrites the graph's)."""
        self.graph_b.replay()
        return self.output.clone()
