"""Block Caching at run time: a wrapper on each cached block computes it (keeping its residual,
written once by residual_capture) or reuses the residual (residual_reuse, with the schedule's
scale and shift) as the static schedule says for the current step. No host synchronisation and no
data-dependent control flow: the step index is the call count of the CFG branch."""

import torch

from cachekern.store.block_cache import BlockCache
from cachekern.models.blocks import cached_units, timestep_of, unit_inputs, wrap_calls
from cachekern.models.branches import BranchNames
from cachekern.models.grad_mode import builds_graph, warn_uncached_with_gradients
from cachekern.models.graphable import forward_arguments, named_inputs, on_one_gpu, signature
from cachekern.models.stack_stand_in import StackStandIn, modules_replaced
from cachekern.models.registry import adapter_for

_NO_OUTPUT = object()   # a stream the block returns as None (e.g. SD3's last block's context)


class _OnDevice(dict):
    """Residuals all kept on the device (no budget): the part of BlockCache's API used here."""

    def put(self, key, tensor):
        self[key] = tensor

    def prefetch(self, key):
        pass


def _scaled(output, scale, shift, channel_dim):
    """A cached output, as a new tensor (the caller may modify what it gets), with the
    per-channel scale and shift."""
    if scale is None:
        return output.clone()
    shape = [1] * output.dim()
    shape[channel_dim] = -1
    return (output.float() * scale.view(shape) + shift.view(shape)).to(output.dtype)


def params_mode(policy):
    """Under which mode the profile holds the parameters this policy applies."""
    if policy.forecast_order and policy.scale_shift == "fit":
        return f"fit-order{policy.forecast_order}"
    return policy.scale_shift


class BlockCachingHandle:
    # Whether a reused block's output carries gradients (the distillation's student); when not,
    # a call that records an autograd graph runs uncached.
    differentiable_reuse = False

    def __init__(self, model, policy):
        self.model = model
        self.policy = policy
        self.profile = policy.profile
        self.units = cached_units(model, self.profile.resnets)
        self.profile.check_units(self.units, "BlockCaching")
        self.adapter = adapter = adapter_for(model)
        if policy.cuda_graphs and adapter.stack_graph_uncapturable:
            raise ValueError(f"BlockCaching: cuda_graphs=True needs a family whose block stack "
                             f"can be captured as a CUDA graph; {adapter.model_class}'s cannot "
                             f"({adapter.stack_graph_uncapturable}); use cuda_graphs=False")
        # A forward that reads the host runs eagerly; its stack alone is graphed.
        self._stack_graphs = policy.cuda_graphs and bool(adapter.graph_uncapturable)
        # Stack graphs: the stand-ins by block lists, and the blocks and the adapter's
        # forward_inputs of the call in progress.
        self._stand_in_lists = {}
        self._stack_blocks = self._forward_inputs = None
        self.schedule = policy.schedule()
        # The blocks each step reuses, in order (prefetching follows it).
        self._reused_at = [[i for i, row in enumerate(self.schedule) if not row[step]]
                           for step in range(self.profile.steps)]
        params = {} if policy.scale_shift is None else \
            self.profile.scale_shift_for(self.schedule, params_mode(policy))
        # On the model's device up front: no copies (and nothing a CUDA graph could not
        # capture) while it runs.
        device = next(model.parameters()).device
        self.params = {key: tuple(t.to(device) for t in pair) for key, pair in params.items()}
        from cachekern import kernels    # Triton loads with the first patch, not with cachekern

        self.kernels = kernels
        self._ring = policy.forecast_order + 1       # computed residuals kept per stream
        self._slot_at, self._reads_at, self._weights = self._forecast_plan(device)
        self.history = []
        # (branch, unit, stream) -> residual: on the device, or in a BlockCache within the
        # device budget (which owns what it is given: no buffer is overwritten then).
        self._offloaded = policy.device_budget_bytes is not None
        self._residuals = BlockCache(policy.device_budget_bytes) if self._offloaded \
            else _OnDevice()
        self._outputs_cached = set()  # keys whose tensor is the block's output, not a residual
        self._no_output = set()       # keys of streams the block returned as None
        self._counts = {}
        self._branches_named = BranchNames(policy.calls_per_step)
        self._current = None
        self._stats = dict(calls=0, block_calls=0, blocks_computed=0, blocks_reused=0,
                           uncached_calls=0)
        self._warned_gradients = False
        # cuda_graphs: per branch [signature, eager calls with it], and the graphs by
        # (branch, step), all in one memory pool (they replay one after another).
        self._eager_calls = {}
        self._graphs = {}
        self._pool = None
        # Around each block's whole call, not its forward: a compiled block (regional
        # compilation, before or after patch) stays compiled, the schedule outside it.
        self._restore_calls = wrap_calls(
            [unit.module for unit in self.units],
            lambda index, module, call: self._wrap(index, self.units[index], call))

    # -- public ---------------------------------------------------------------------------------
    def stats(self) -> dict:
        """calls (model calls), block_calls, blocks_computed, blocks_reused, uncached_calls
        (calls with gradients, run uncached), the schedule's
        compute fraction, and bytes_held (cached residuals) or, with a device budget, the
        block cache's own stats."""
        out = dict(self._stats)
        out["schedule_compute"] = sum(c for row in self.schedule for c in row) / \
            sum(len(row) for row in self.schedule)
        if self._offloaded:
            out["block_cache"] = self._residuals.stats()
        else:
            out["bytes_held"] = sum(r.numel() * r.element_size() for r in self._residuals.values())
        return out

    def reset(self):
        """Forgets cached residuals and step counters: the next call is step 0."""
        self._release()
        self._residuals.clear()
        self._no_output.clear()
        self._counts.clear()
        self.history.clear()
        self._branches_named.restart()

    def close(self):
        self._release()
        self._restore_calls()
        self._residuals.clear()

    # -- plumbing used by patching ----------------------------------------------------------------
    def cache_context(self, original, name, **kwargs):
        return self._branches_named.cache_context(original, name, **kwargs)

    def forward(self, original_forward, args, kwargs):
        if not self.differentiable_reuse and builds_graph(self.model, args, kwargs):
            if not self._warned_gradients:
                self._warned_gradients = True
                warn_uncached_with_gradients("BlockCaching")
            self._stats["uncached_calls"] += 1
            return original_forward(*args, **kwargs)     # the blocks see no step: all compute
        if self.adapter.prefill_call(kwargs):           # not a step: uncached, not counted
            self._stats["uncached_calls"] += 1
            return original_forward(*args, **kwargs)
        branch = self._branches_named.branch()
        count = self._counts.get(branch, 0)
        step = count % self.profile.steps
        timestep = timestep_of(args, kwargs)
        if isinstance(timestep, (int, float)) or (isinstance(timestep, torch.Tensor) and
                                                  timestep.device.type == "cpu"):
            # Readable without a host synchronisation: check the schedule applies. (On a GPU
            # the pipeline's timesteps live there, and reading them would cost a sync a step.)
            value = float(timestep if not isinstance(timestep, torch.Tensor)
                          else timestep.reshape(-1)[0])
            if step and not self.profile.matches_timestep(step, value) and \
                    self.profile.matches_timestep(0, value):
                # Step 0's timestep again: the last generation was cut short and a new one
                # starts (as TeaCache detects it). Every block computes at step 0, so nothing
                # of the old generation is read.
                count = step = 0
            self.profile.check_timestep(step, value)
        self._current = (branch, step)
        if self._offloaded:
            self._plan(branch, step)
        try:
            if self._stack_graphs:
                out = self._with_stack_graphed(original_forward, args, kwargs)
            else:
                out = self._graphed(original_forward, args, kwargs, branch, step) \
                    if self.policy.cuda_graphs else None
                if out is None:
                    out = original_forward(*args, **kwargs)
        finally:
            self._current = None
        self._counts[branch] = count + 1
        self._stats["calls"] += 1
        self.history.append(dict(step=step, branch=branch,
                                 computed=[row[step] for row in self.schedule]))
        return out

    # -- CUDA graphs (cachekern.block_caching.graphs) ------------------------------------------
    def _graphed(self, original_forward, args, kwargs, branch, step):
        """The call replayed from its (branch, step) graph, captured on first use; None when it
        must run eagerly: not graphable (a dict argument, tensors off the GPU), or the branch
        has not yet run a whole generation of calls of this signature eagerly (which sizes the
        residual buffers the graphs write in place)."""
        from cachekern.block_caching.graphs import CapturedCall

        inputs = named_inputs(self.model, args, kwargs)
        if inputs is None or not on_one_gpu(inputs):
            return None
        return self._replay(branch, step, inputs, lambda pool: CapturedCall(
            inputs, lambda static: original_forward(**static), pool))

    def _with_stack_graphed(self, original_forward, args, kwargs):
        """The model's forward, run eagerly with its block stack standing in for its block
        lists (_run_stack)."""
        adapter = self.adapter
        lists = tuple(adapter.block_lists(self.model))
        stand_ins = self._stand_in_lists.get(lists)
        if stand_ins is None:     # built once: building modules per call costs host time
            stack = StackStandIn(self._run_stack, lambda: self._stack_blocks)
            stand_ins = self._stand_in_lists[lists] = adapter.stand_ins(lists, stack, self.model)
        self._stack_blocks = adapter.model_blocks(self.model)
        self._forward_inputs = forward_arguments(self.model, args, kwargs, adapter.forward_inputs)
        try:
            with modules_replaced(self.model, stand_ins):
                return original_forward(*args, **kwargs)
        finally:
            self._stack_blocks = self._forward_inputs = None

    def _run_stack(self, args, kwargs):
        """Block 0's call, standing for the whole stack: replayed from its (branch, step) graph
        where it can be (as _graphed says for a whole call), else run eagerly."""
        from cachekern.block_caching.graphs import CapturedStack
        from cachekern.models.stack_graphable import stack_inputs

        adapter, blocks = self.adapter, self._stack_blocks
        call = adapter.with_forward_inputs(adapter.stack_call(args, kwargs), self._forward_inputs)
        run_blocks = lambda c: adapter.run_blocks(self.model, c, blocks)   # noqa: E731
        inputs = stack_inputs(call)
        out = None if inputs is None else self._replay(
            *self._current, inputs, lambda pool: CapturedStack(inputs, run_blocks, pool))
        return adapter.stack_output(out if out is not None else run_blocks(call))

    def _replay(self, branch, step, inputs, capture):
        """The (branch, step) graph's replay on `inputs`, captured with `capture(pool)` on first
        use; None while the branch has not yet run a whole generation of calls of this
        signature eagerly (which sizes the residual buffers the graphs write in place)."""
        call_signature = signature(inputs)
        seen = self._eager_calls.get(branch)
        if seen is None or seen[0] != call_signature:
            self._release(branch)
            seen = self._eager_calls[branch] = [call_signature, 0]
        if seen[1] < self.profile.steps:
            seen[1] += 1
            return None
        graph = self._graphs.get((branch, step))
        if graph is None:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            before = dict(self._stats)      # the capture runs the wrappers' Python once
            graph = capture(self._pool)
            graph.counts = {name: self._stats[name] - before[name] for name in before}
            self._stats.update(before)
            self._graphs[(branch, step)] = graph
        out = graph.replay(inputs)
        for name, count in graph.counts.items():
            self._stats[name] += count
        return out

    def _release(self, branch=None):
        """Releases the graphs of `branch` (all when None)."""
        for key in [key for key in self._graphs if branch is None or key[0] == branch]:
            self._graphs.pop(key).release()
        if branch is None:
            self._eager_calls.clear()

    # -- the forecast plan ------------------------------------------------------------------------
    def _forecast_plan(self, device):
        """From the static schedule: the ring slot each computed (block, step) writes, the slots
        each reused one reads (newest first: its block's last computed residuals, at most
        forecast_order + 1), and, without fitted parameters, the Lagrange weights that
        extrapolate them to the step's time ([1, n] on the device)."""
        times = [t if self.policy.forecast_time == "timestep" and t is not None else float(s)
                 for s, t in enumerate(self.profile.timesteps)]
        slot_at, reads_at, weights = {}, {}, {}
        for index, row in enumerate(self.schedule):
            computed = []
            for step, compute in enumerate(row):
                if compute:
                    slot_at[(index, step)] = len(computed) % self._ring
                    computed.append(step)
                    continue
                n = min(self._ring, len(computed))
                reads_at[(index, step)] = [(len(computed) - 1 - j) % self._ring
                                           for j in range(n)]
                if self.policy.forecast_order and self.policy.scale_shift is None and n > 1:
                    w = self.kernels.lagrange_weights([times[c] for c in computed[::-1][:n]],
                                                      times[step])
                    weights[(index, step)] = torch.tensor([w], dtype=torch.float32,
                                                          device=device)
        return slot_at, reads_at, weights

    @staticmethod
    def _slot_key(key, slot):
        """Where a stream's residual of ring slot `slot` is kept (order 0: the stream's key)."""
        return key if slot is None else key + (slot,)

    def _slots(self, index, step):
        """The ring slots a reuse at (index, step) reads; [None] for order 0 (one residual)."""
        return self._reads_at[(index, step)] if self._ring > 1 else [None]

    # -- per block ------------------------------------------------------------------------------
    def _wrap(self, index, unit, forward):
        compute_at = self.schedule[index]

        def cached(*args, **kwargs):
            if self._current is None:          # called outside the model's forward
                return forward(*args, **kwargs)
            branch, step = self._current
            inputs = unit_inputs(unit, args, kwargs)
            keys = [(branch, index, k) for k in range(len(inputs))]
            self._stats["block_calls"] += 1
            if not compute_at[step] and all(
                    key in self._no_output or
                    all(self._slot_key(key, slot) in self._residuals
                        for slot in self._slots(index, step)) for key in keys):
                self._stats["blocks_reused"] += 1
                self._prefetch_after(branch, index, step)
                return unit.io.result([self._reuse(key, x, unit.io.channel_dim, step)
                                       for key, x in zip(keys, inputs)], args, kwargs)
            self._stats["blocks_computed"] += 1
            result = forward(*args, **kwargs)
            slot = self._slot_at.get((index, step)) if self._ring > 1 else None
            for key, x, out in zip(keys, inputs, unit.io.outputs(result)):
                self._keep(key, slot, x, out)
            return result
        return cached

    def _reuse(self, key, x, channel_dim, step):
        if key in self._no_output:
            return None
        _, index, k = key
        slots = self._slots(index, step)
        if self._ring > 1 and len(slots) > 1:
            return self._forecast(key, slots, x, channel_dim, step)
        residual = self._residuals.get(self._slot_key(key, slots[0]))
        scale, shift = self._scale_shift(index, step, k, x.device)
        if scale is not None and scale.dim() == 2:    # a fitted forecast from one residual
            scale = scale[0]
        if key in self._outputs_cached:
            return _scaled(residual, scale, shift, channel_dim)
        return self.kernels.residual_reuse(x.contiguous(), residual, scale, shift,
                                           channel_dim=channel_dim)

    def _forecast(self, key, slots, x, channel_dim, step):
        """The stream's next residual predicted from its last computed ones: Lagrange weights
        [1, n], or fitted per-channel weights [n, C] and a shift."""
        _, index, k = key
        entries = [self._residuals.get(self._slot_key(key, slot)) for slot in slots]
        fitted, bias = self._scale_shift(index, step, k, x.device)
        weights = fitted[None] if fitted is not None else self._weights[(index, step)]
        batch = entries[0].shape[0]
        weights = weights.expand(batch, *weights.shape[1:])
        base = None if key in self._outputs_cached else x.contiguous()   # outputs: no x to add
        return self.kernels.residual_forecast(base, entries, weights, bias,
                                              channel_dim=channel_dim)

    def _keep(self, key, slot, x, out):
        """Stores what a reuse of this stream needs: out − x, or the output itself where the
        block changes the shape, in ring slot `slot` (None: order 0), overwriting the buffer
        that slot held when it is ours."""
        if out is None or x is None:
            self._no_output.add(key)
            return
        self._no_output.discard(key)
        stored = key
        key = self._slot_key(key, slot)
        previous = None if self._offloaded else self._residuals.get(key)
        buffer = previous if previous is not None and previous.shape == out.shape and \
            previous.dtype == out.dtype else None
        if out.shape == x.shape:
            self._outputs_cached.discard(stored)
            kept = self.kernels.residual_capture(out.contiguous(), x.contiguous(),
                                                 out=buffer)[0]
        else:    # the block changes the shape: its output itself is kept
            self._outputs_cached.add(stored)
            kept = buffer.copy_(out) if buffer is not None else out.detach().clone()
        self._residuals.put(key, kept)

    def _plan(self, branch, step):
        """Tells the block cache the order the residuals will be needed in (this step's reused
        blocks, then the next steps'), so it spills those needed last, and starts fetching the
        first one this step reuses."""
        steps = self.profile.steps
        order = {}
        for ahead in range(steps):
            for i in self._reused_at[(step + ahead) % steps]:
                order.update(dict.fromkeys(self._keys_of(branch, i)))
        self._residuals.plan(list(order))
        for i in self._reused_at[step][:1]:
            for key in self._keys_of(branch, i):
                self._residuals.prefetch(key)

    def _keys_of(self, branch, index):
        slots = [None] if self._ring == 1 else range(self._ring)
        return [self._slot_key((branch, index, k), slot)
                for k in range(len(self.units[index].io.names)) for slot in slots
                if self._slot_key((branch, index, k), slot) in self._residuals]

    def _prefetch_after(self, branch, index, step):
        """Starts fetching the residual of the next block this step reuses."""
        if not self._offloaded:
            return
        for i in [i for i in self._reused_at[step] if i > index][:1]:
            for key in self._keys_of(branch, i):
                self._residuals.prefetch(key)

    def _scale_shift(self, index, step, k, device):
        scale, shift = self.params.get((index, step, k), (None, None))
        if scale is not None and scale.device != device:
            raise ValueError(f"BlockCaching: block {self.units[index].name} runs on {device}, "
                             f"but the model was patched on {scale.device}; patch after moving "
                             f"the model")
        return scale, shift
