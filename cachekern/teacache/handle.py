"""`TeaCacheHandle`: what `cachekern.patch` returns for a TeaCache policy, and where the patched
model's caching state lives.

State lives here, on the patched instance (never on its class), one BranchState per CFG branch.
The branch is the name a diffusers pipeline gives through ``model.cache_context(name)``; without
one, calls are assigned to branches by order (``TeaCache(calls_per_step=...)``).
"""

import weakref

import torch

from cachekern._warnings import warn
from cachekern.models.branches import BranchNames
from cachekern.models.context_parallel import is_context_parallel, stack_shard
from cachekern.models.graphable import (forward_arguments, named_inputs, on_one_gpu, output_like,
                                        signature)
from cachekern.models.grad_mode import builds_graph, warn_uncached_with_gradients
from cachekern.models.stack_stand_in import StackStandIn, modules_replaced
from cachekern.teacache.policy import PER_SAMPLE_GRAPH_BATCH
from cachekern.teacache.runtime import BranchState, TeaCacheRuntime
from cachekern.teacache.shell_memo import MemoizedModule

GRAPHS_UNDER_CONTEXT_PARALLELISM = (
    "TeaCache: cuda_graphs=True does not run under context parallelism (the decision's "
    "collective is not captured); use cuda_graphs=False")


class TeaCacheHandle:
    def __init__(self, model, adapter, policy):
        self.model = model
        self.adapter = adapter
        self.policy = policy
        self.runtime = TeaCacheRuntime(policy, adapter, model)
        self.runtime.check_model(self._model_blocks())
        if policy.cuda_graphs and is_context_parallel(model):
            raise ValueError(GRAPHS_UNDER_CONTEXT_PARALLELISM)
        if policy.cuda_graphs and adapter.stack_graph_uncapturable:
            raise ValueError(f"TeaCache: cuda_graphs=True needs a family whose block stack can "
                             f"be captured as a CUDA graph; {adapter.model_class}'s cannot "
                             f"({adapter.stack_graph_uncapturable}); use cuda_graphs=False")
        # A forward that reads the host runs eagerly; its stack is graphed
        # (cachekern.teacache.stack_graphs).
        self._stack_graphs = policy.cuda_graphs and bool(adapter.graph_uncapturable)
        self._history = []
        self._branches = {}
        self._branches_named = BranchNames(policy.calls_per_step)
        self._call = None          # (branch, timestep, steps) of the forward call in progress
        self._in_stack = False     # its stack is running eagerly (past the decision)
        self._blocks = None
        self._forward_inputs = None  # the adapter's forward_inputs of the call in progress
        self._stand_in_lists = {}
        self._memos = {}           # cachekern.teacache.shell_memo stand-ins, by module name
        self._graphs = {}          # cachekern.teacache.graphs.GraphedStep, by branch
        self._capturing = None     # (run_if or None, DeviceDecision, prelude) in a capture
        self._log = None           # cachekern.teacache.graphs.DecisionLog of graphed calls
        # By call signature (cachekern.models.graphable): the stack's signature an eager call
        # of it left in its branch's state (a graph replays the call only on state of that
        # signature), and the type it returned.
        self._stack_signatures = {}
        self._output_types = {}
        self._stats = self._zero_stats()
        self._warned_gradients = False
        self._warned_step_count = False
        self._pipeline = None      # a weak reference, when patched through a pipeline

    @staticmethod
    def _zero_stats():
        return dict(calls=0, computed=0, skipped=0, samples_computed=0, samples_skipped=0,
                    uncached_calls=0, decision_seconds=0.0)

    def _model_blocks(self):
        """The model's own blocks, in stack order (outside a call, when no stand-in is set)."""
        return self.adapter.model_blocks(self.model)

    # -- public ---------------------------------------------------------------------------------
    def stats(self) -> dict:
        """calls, computed, skipped (calls whose stack ran / was skipped), samples_computed and
        samples_skipped, uncached_calls (calls the cache could not serve, e.g. with ControlNet
        residuals), decision_seconds (host time deciding, including the one synchronisation; 0 for
        calls replayed by cuda_graphs, which decide on the device),
        bytes_held (state kept between steps), memo_hits (calls that reused a module output
        outside the stack, see cachekern.teacache.shell_memo), branches."""
        self._flush()
        out = dict(self._stats)
        out["bytes_held"] = sum(state.nbytes() for state in self._branches.values()) + \
            sum(memo.nbytes() for memo in self._memos.values())
        out["memo_hits"] = sum(memo.hits for memo in self._memos.values())
        out["branches"] = sorted(self._branches)
        return out

    def call_in_progress(self):
        """(branch, step) while an eager call runs its stack past the decision, else None: what
        an observer of the blocks attributes what it sees to (cachekern.calibration)."""
        if not self._in_stack or self._call is None:
            return None
        return self._call[0], self._branches[self._call[0]].step

    @property
    def history(self) -> list:
        """One record per call: step, branch, timestep, computed, rel_l1, accumulated."""
        self._flush()
        return self._history

    def reset(self):
        """Forgets all state, history and counters: the next call starts a new generation."""
        self.close()
        self._branches.clear()
        self._memos.clear()
        self._history.clear()
        self._stats = self._zero_stats()
        self._branches_named.restart()

    def close(self):
        """Releases the CUDA graphs (called by unpatch and reset); the records of graphed calls
        are read first, so history and stats stay complete after unpatch."""
        self._flush()
        for graph in self._graphs.values():
            graph.release()
        self._graphs.clear()
        self._log = None

    # -- plumbing used by patching --------------------------------------------------------------
    def cache_context(self, original, name, **kwargs):
        return self._branches_named.cache_context(original, name, **kwargs)

    def forward(self, original_forward, args, kwargs):
        if builds_graph(self.model, args, kwargs):
            if not self._warned_gradients:
                self._warned_gradients = True
                warn_uncached_with_gradients("TeaCache")
            self._stats["uncached_calls"] += 1
            return original_forward(*args, **kwargs)
        if self.adapter.runs_uncached(kwargs) or self.adapter.prefill_call(kwargs):
            self._stats["uncached_calls"] += 1
            return original_forward(*args, **kwargs)
        timestep = self.adapter.timestep_of(args, kwargs)
        branch = self._branches_named.branch()
        steps = self._steps_as_counted(branch, self._step_count())
        self._call = (branch, timestep, steps)
        if not self.policy.cuda_graphs:
            return self._eager(original_forward, args, kwargs)
        if is_context_parallel(self.model):     # enabled after patch
            raise ValueError(GRAPHS_UNDER_CONTEXT_PARALLELISM)
        if self._stack_graphs:
            return self._eager(original_forward, args, kwargs)
        inputs = named_inputs(self.model, args, kwargs)
        out = self._graphed(original_forward, inputs)
        if out is not None:
            return out
        self._to_host(branch)
        out = self._eager(original_forward, args, kwargs)
        state = self._branches.get(branch)
        if inputs is not None and state is not None:
            call_signature = signature(inputs)
            self._stack_signatures[call_signature] = state.signature
            self._output_types[call_signature] = tuple if isinstance(out, tuple) else type(out)
        return out

    def follow_pipeline(self, pipeline):
        """Takes the step count from `pipeline`'s scheduler (patch does this when given a
        pipeline): the generation in progress sets its timesteps before the first call."""
        try:
            self._pipeline = weakref.ref(pipeline)
        except TypeError:            # an object without weak references: hold it
            self._pipeline = lambda: pipeline

    def _steps_as_counted(self, branch, steps):
        """The step count in this model's own count of its calls. A model that joins a
        generation late (Wan 2.2's low-noise expert takes over at the boundary) counts from 0
        where the pipeline's step_index (from cache_context) is k: its last step is then its
        (steps − k − 1)-th call, and the count is shifted to match."""
        context = self._branches_named.context
        index = context[1].get("step_index") if context is not None else None
        if index is None or steps is None:
            return steps
        state = self._branches.get(branch)
        counted = state.step + 1 if state is not None else 0
        return steps - int(index) + counted

    def _step_count(self):
        """Model calls per branch in this generation: from the pipeline's cache_context (Wan's
        pipelines pass it), else the patched pipeline's scheduler (its timesteps: one call
        each, two-call solvers included), else the policy's num_inference_steps."""
        context = self._branches_named.context
        if context is not None and context[1].get("num_inference_steps"):
            return int(context[1]["num_inference_steps"])
        pipeline = self._pipeline() if self._pipeline is not None else None
        timesteps = getattr(getattr(pipeline, "scheduler", None), "timesteps", None)
        if timesteps is not None and len(timesteps):
            return len(timesteps)
        steps = self.policy.num_inference_steps
        if steps is None and self.policy.compute_last_step and \
                self.policy.compute_steps is None and not self._warned_step_count:
            self._warned_step_count = True
            warn("TeaCache: the step count is unknown (a bare model, no num_inference_steps "
                 "from the policy or the pipeline's cache_context), so compute_last_step cannot "
                 "force the last step; pass TeaCache(num_inference_steps=...) or patch the "
                 "pipeline instead of its model")
        return steps

    def _graphed(self, original_forward, inputs):
        """The call (its arguments by name: cachekern.models.graphable) through
        cachekern.teacache.graphs: its output, or None when the call must take the eager path
        (not graphable, or the branch has no state for calls of this signature yet: its first
        such call runs eagerly and leaves the buffers the graph works on)."""
        branch, timestep, steps = self._call
        state = self._branches.get(branch)
        static = self.policy.compute_steps is not None
        if inputs is None or state is None or state.residual is None or \
                (state.prev is None and not static) or \
                not isinstance(timestep, torch.Tensor) or not on_one_gpu(inputs):
            return None
        call_signature = signature(inputs)
        if self._stack_signatures.get(call_signature) != state.signature:
            return None
        output = self._replay(branch, state, call_signature, steps, inputs,
                              lambda key: self._capture(original_forward, inputs, key, state,
                                                        steps))
        return output_like(output, self._output_types[call_signature])

    def _capture(self, original_forward, kwargs, key, state, steps):
        from cachekern.teacache import graphs

        branch = self._call[0]
        # The slots of the forecast are the ones _graphed keyed the graph on.
        decision, scratch = self._device_decisions(state, steps)
        # What only the blocks read runs inside the compute branch (a skip does not pay it).
        deferred = {name: graphs.DeferredModule(self.model._modules[name])
                    for name in self.adapter.stack_only_modules
                    if self.model._modules.get(name) is not None}

        def prelude():
            for module in deferred.values():
                module.run_deferred()

        def forward(static, run_if=None):
            # The stack reads the graph's static timestep; warm-up decides on scratch state.
            saved = self._call
            self._call = (branch, static[self.adapter.timestep_arg], steps)
            self._capturing = (run_if, scratch, None) if run_if is None else \
                (run_if, decision, prelude)
            for module in deferred.values():
                module.deferring, module.calls = run_if is not None, []
            try:
                return self._eager(original_forward, (), dict(static, return_dict=False),
                                   replaced=deferred)
            finally:
                self._call, self._capturing = saved, None

        return graphs.GraphedStep(key, kwargs, decision, capture_forward=forward, warm_up=forward)

    def _to_host(self, branch):
        """Makes the host's state of the branch current again after graphed calls (one
        synchronisation), before an eager call or a new capture."""
        state = self._branches.get(branch)
        if state is not None and state.device_decision is not None:
            self._flush()
            state.device_decision.store(state)
            state.device_decision = None

    def _flush(self):
        if self._log is not None:
            self._add_records(self._log.flush())

    def _add_records(self, rows):
        from cachekern.teacache.device_decision import record_from_row

        per_sample = self.policy.decision == "per_sample"
        for branch, batch, row in rows:
            record = record_from_row(row, branch, batch if per_sample else None)
            compute = record["computed"] if per_sample else [record["computed"]] * batch
            self._record(dict(record, compute=compute), branch)

    def _record(self, decision, branch):
        """Counts a call and appends its history record (decision: as TeaCacheRuntime.run
        returns it, or read back from a graphed call)."""
        compute = decision["compute"]
        n_computed = sum(compute)
        stats = self._stats
        stats["calls"] += 1
        stats["computed" if n_computed else "skipped"] += 1
        stats["samples_computed"] += n_computed
        stats["samples_skipped"] += len(compute) - n_computed
        stats["decision_seconds"] += decision.get("seconds", 0.0)
        per_sample = self.policy.decision == "per_sample"
        self._history.append(dict(step=decision["step"], branch=branch,
                                  timestep=decision["timestep"],
                                  computed=compute if per_sample else compute[0],
                                  rel_l1=decision["rel_l1"],
                                  accumulated=decision["accumulated"]))

    def _eager(self, original_forward, args, kwargs, replaced=None):
        """The model's forward with the cached stack in place of its blocks; `replaced`
        ({module name: stand-in}, cuda_graphs' capture) replaces the memoized modules."""
        lists = tuple(self.adapter.block_lists(self.model))
        self._blocks = self.adapter.model_blocks(self.model)
        self._forward_inputs = forward_arguments(self.model, args, kwargs,
                                                 self.adapter.forward_inputs)
        stand_ins = dict(self._stand_ins(lists))
        stand_ins.update(replaced or {})
        for name, inputs in self.adapter.memoized_modules.items() if replaced is None else ():
            tensors = [kwargs.get(arg) for arg in inputs]
            module = self.model._modules.get(name)
            if module is None or not all(isinstance(t, torch.Tensor) for t in tensors):
                continue  # passed positionally, or absent: the module runs as it is
            memo = self._memos.get(name)
            if memo is None or memo.module is not module:
                memo = self._memos[name] = MemoizedModule(module)
            memo.set_inputs(tensors)
            stand_ins[name] = memo
        try:
            with modules_replaced(self.model, stand_ins):
                return original_forward(*args, **kwargs)
        finally:
            self._call = self._blocks = self._forward_inputs = None

    def _stack_graphed(self, call, state, branch, timestep, steps):
        """The stack call through its CUDA graph (cachekern.teacache.stack_graphs): its output,
        or None when the call runs eagerly (its inputs are not graphable, or the branch has no
        state for this signature yet: its first such call leaves the buffers the graph uses)."""
        from cachekern.models.stack_graphable import stack_inputs
        from cachekern.teacache.stack_graphs import StackGraph

        static = self.policy.compute_steps is not None
        if state.residual is None or (state.prev is None and not static) or \
                state.signature != (tuple(call.hidden.shape), call.hidden.dtype,
                                    call.hidden.device):
            return None
        inputs = stack_inputs(call, timestep)
        if inputs is None:
            return None
        blocks = self._blocks

        def capture(key):
            decision, scratch = self._device_decisions(state, steps)

            def run(stack_call, stack_timestep, run_if):
                if run_if is None:
                    return self.runtime.graph_warm_up(self.model, stack_call, blocks, state,
                                                      scratch, stack_timestep)
                return self.runtime.graph_capture(self.model, stack_call, blocks, state,
                                                  decision, stack_timestep, run_if)
            return StackGraph(key, inputs, decision, run)
        return self._replay(branch, state, signature(inputs), steps, inputs, capture)

    def _replay(self, branch, state, call_signature, steps, inputs, capture):
        """Replays the branch's graph (a whole call's or a stack's) on `inputs`; `capture(key)`
        makes it anew first when the key (the inputs' signature, the step count and the state
        buffers the graph reads) changed. Logs the call's decision record without waiting."""
        # The graph path is imported on first use: it loads Triton (the device decision), which
        # `import cachekern` does not.
        from cachekern.teacache import device_forecast, graphs

        static = self.policy.compute_steps is not None
        if device_forecast.forecasts(self.policy):
            buffers = device_forecast.ensure_slots(state, self.policy.forecast_order + 1)
        else:
            buffers = [state.residual]
        key = (call_signature, steps, state.prev.data_ptr() if not static else 0) + \
            tuple(t.data_ptr() for t in buffers)
        graph = self._graphs.get(branch)
        if graph is None or graph.key != key:
            if graph is not None:
                self._to_host(branch)
                graph.release()
            graph = self._graphs[branch] = capture(key)
        if state.device_decision is not graph.decision:   # the host's state is the newer
            graph.decision.load(state)
            state.device_decision = graph.decision
        if self._log is None:
            self._log = graphs.DecisionLog(state.residual.device)
        output = graph.replay(inputs)
        self._add_records(self._log.append(graph.decision.record, branch,
                                           state.residual.shape[0]))
        return output

    def _device_decisions(self, state, steps):
        """A branch's device decision and a scratch one for the warm-up, with their forecasts
        on the slots the graph is keyed on."""
        from cachekern.teacache.device_decision import DeviceDecision
        from cachekern.teacache.device_forecast import DeviceForecast, forecasts

        decision, scratch = (DeviceDecision(self.policy, self.runtime.polynomial, steps,
                                            state.residual.device, state.residual.shape[0])
                             for _ in range(2))
        if forecasts(self.policy):
            decision.forecast = DeviceForecast(self.policy, state.slots)
            scratch.forecast = DeviceForecast(self.policy, [s.clone() for s in state.slots])
        return decision, scratch

    def _check_graphable_batch(self, hidden):
        """Per-sample decisions under graphs capture a branch per pattern of samples: said at
        the first call whose batch is too large for that, before it runs."""
        policy = self.policy
        if policy.cuda_graphs and policy.decision == "per_sample" and hidden.is_cuda and \
                hidden.shape[0] > PER_SAMPLE_GRAPH_BATCH:
            raise ValueError(f"TeaCache: cuda_graphs=True with decision='per_sample' captures "
                             f"one branch per pattern of computing samples (2**batch), for "
                             f"batches of at most {PER_SAMPLE_GRAPH_BATCH} samples; this call's "
                             f"stack has {hidden.shape[0]}: use decision='global', or "
                             f"cuda_graphs=False, or a smaller batch")

    def _stand_ins(self, lists):
        """The block lists the model sees during a call: the cached stack in the first, the rest
        empty. Built once per set of lists (building modules per call costs host time that a
        skipped step would pay in full)."""
        stand_ins = self._stand_in_lists.get(lists)
        if stand_ins is None:
            stack = StackStandIn(self._run_stack, lambda: self._blocks)
            stand_ins = self._stand_in_lists[lists] = self.adapter.stand_ins(lists, stack,
                                                                             self.model)
        return stand_ins

    def _run_stack(self, args, kwargs):
        branch, timestep, steps = self._call
        state = self._branches.setdefault(branch, BranchState())
        call = self.adapter.with_forward_inputs(self.adapter.stack_call(args, kwargs),
                                                self._forward_inputs or {})
        with torch.no_grad():
            if self._capturing is not None:   # inside cachekern.teacache.graphs' capture
                run_if, decision, prelude = self._capturing
                if run_if is None:
                    out = self.runtime.graph_warm_up(self.model, call, self._blocks, state,
                                                     decision, timestep)
                else:
                    out = self.runtime.graph_capture(self.model, call, self._blocks, state,
                                                     decision, timestep, run_if, prelude)
            else:
                self._check_graphable_batch(call.hidden)
                if self._stack_graphs:
                    out = self._stack_graphed(call, state, branch, timestep, steps)
                    if out is not None:
                        return self.adapter.stack_output(out)
                    self._to_host(branch)
                self._in_stack = True
                try:
                    out, decision = self.runtime.run(self.model, call, self._blocks, state,
                                                     timestep, steps,
                                                     stack_shard(self.model, self._blocks[0]))
                finally:
                    self._in_stack = False
                self._record(decision, branch)
        return self.adapter.stack_output(out)
