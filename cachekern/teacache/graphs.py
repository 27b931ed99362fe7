"""TeaCache's whole call as one CUDA graph that decides on the device (TeaCache(cuda_graphs=True)).

Per CFG branch and input signature, the model's forward is captured once with the cached stack
in place of its blocks. Inside the graph: the pre-stack work, the indicator and the fused
decision kernel, then TeaCache's decision itself (cachekern.teacache.device_decision), then two
conditional nodes on the decision's flags: *compute* runs the blocks and captures the new
residual, *skip* applies the cached one; then the model's tail. Replaying it costs the host a
few input copies and one launch, and needs no host synchronisation at all: the GPU never waits
for the host to read a decision, and the host never waits for the GPU.

The decision's record (step, timestep, distance, accumulator, computed) is copied after each
replay into pinned host memory without waiting; `DecisionLog.flush` reads the copies when the
handle's history or stats are asked for.

What a graph reads and writes must stay put: the call's inputs are copied into static tensors,
and the branch's state buffers (the previous modulated input, the residual, the decision state)
are the branch's own. A call with other shapes, dtypes or arguments captures again.
"""

import functools
import gc

import torch
import torch.utils._pytree as pytree

from cachekern.models.graphable import copy_into, static_copy
from cachekern.teacache import conditional_nodes as cuda_conditional
from cachekern.teacache.device_decision import RECORD_FIELDS, DeviceDecision


class GraphedStep:
    """One branch's captured call. `capture_forward(static_kwargs, run_if)` runs the model's
    forward (with the handle in capture mode, so that the stack decides on the device through
    `self.decision` and branches with `run_if(flag, body)`) and returns the output tensor;
    `warm_up(static_kwargs)` runs what the capture will launch once, outside it."""

    def __init__(self, key, kwargs, decision: DeviceDecision, capture_forward, warm_up):
        self.key = key
        self.decision = decision
        self.static = static_copy(kwargs)
        device = decision.state.device
        with torch.cuda.device(device):
            # A graph of a dropped handle freed by the cyclic collector in the middle of this
            # capture would make it fail: collect now.
            gc.collect()
            # The warm-up compiles the kernels the capture will launch, on the stream the
            # capture's conditional bodies use (its cuBLAS workspace set up outside a capture).
            side = cuda_conditional.body_stream(device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                warm_up(self.static)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            self.pool = torch.cuda.graph_pool_handle()
            run_if = functools.partial(cuda_conditional.run_if, pool=self.pool)
            with torch.cuda.graph(self.graph, pool=self.pool):
                self.output = capture_forward(self.static, run_if)

    def replay(self, kwargs):
        copy_into(self.static, kwargs)
        self.graph.replay()
        # The next replay overwrites the graph's own outputs (tensors, or lists of them).
        return pytree.tree_map_only(torch.Tensor, torch.clone, self.output)

    def release(self):
        self.graph.reset()


class _Layout:
    """A tensor's layout without its data (a pytree leaf)."""

    def __init__(self, shape, stride, dtype, device):
        self.shape, self.stride, self.dtype, self.device = shape, stride, dtype, device

    @classmethod
    def of(cls, t):
        return cls(t.shape, t.stride(), t.dtype, t.device)

    def empty(self):
        return torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=self.device)


class DeferredModule(torch.nn.Module):
    """Stands in, during a capture, for a module outside the stack whose output only the
    blocks read (FluxAdapter.stack_only_modules): the call returns placeholders of the output's
    layout, and `run_deferred()`, called inside the compute branch, runs the module and fills
    them. The values are the module's own, bit for bit; a skipped call never computes them.
    While not deferring (the warm-up) it runs the module and learns the output's layout."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.deferring = False
        self.layout = None
        self.calls = []

    def forward(self, *args, **kwargs):
        if not self.deferring:
            out = self.module(*args, **kwargs)
            self.layout = pytree.tree_map_only(torch.Tensor, _Layout.of, out)
            return out
        if self.layout is None:
            raise RuntimeError("DeferredModule: called in a capture before its warm-up")
        placeholders = pytree.tree_map_only(_Layout, _Layout.empty, self.layout)
        self.calls.append((args, kwargs, placeholders))
        return placeholders

    def run_deferred(self):
        """Runs the deferred calls (in each branch that computes: per-sample decisions capture
        one per pattern); a new capture starts a new list."""
        for args, kwargs, placeholders in self.calls:
            out = self.module(*args, **kwargs)
            for target, value in zip(pytree.tree_leaves(placeholders), pytree.tree_leaves(out)):
                if isinstance(target, torch.Tensor):
                    target.copy_(value)


class DecisionLog:
    """The records of graphed calls, copied to pinned host memory as they happen and read in
    one synchronisation when asked for (or when the buffer fills)."""

    def __init__(self, device, capacity=512, width=len(RECORD_FIELDS)):
        self.capacity = capacity
        self.rows = torch.empty((capacity, width), dtype=torch.float64, pin_memory=True)
        self.pending = []              # (branch, batch, width) per row written
        self.done = torch.cuda.Event()
        self.device = device

    def append(self, record, branch, batch):
        """Enqueues the copy of this call's record (per-sample records are wider); returns the
        rows read so far when the buffer was full or too narrow (their copies waited for), else
        an empty list."""
        width = record.numel()
        full = len(self.pending) == self.rows.shape[0] or width > self.rows.shape[1]
        flushed = self.flush() if full else []
        if width > self.rows.shape[1]:
            self.rows = torch.empty((self.capacity, width), dtype=torch.float64,
                                    pin_memory=True)
        self.rows[len(self.pending), :width].copy_(record, non_blocking=True)
        self.pending.append((branch, batch, width))
        self.done.record()
        return flushed

    def flush(self):
        """[(branch, batch, row values)] of the pending rows, in call order."""
        if not self.pending:
            return []
        self.done.synchronize()
        rows = self.rows[:len(self.pending)].tolist()
        out = [(branch, batch, row[:width])
               for (branch, batch, width), row in zip(self.pending, rows)]
        self.pending = []
        return out
