"""TeaCache at run time: per-branch state and one call of the block stack.

Per call: block 0's indicator and its change go through the fused kernels (one pass, the new
modulated input written over the previous one), then one host transfer reads the timestep and the
per-sample sums together: the call's only synchronisation. A skipped call is one residual_reuse;
a computed one runs the blocks and writes the new residual with residual_capture.
"""

import time
from typing import Optional

import torch

from cachekern.models.base import StackCall
from cachekern.models.served import serving


def _last_dim_contiguous(call: StackCall) -> StackCall:
    """`call` with a hidden whose channel dimension is contiguous, as the kernels need."""
    return call if call.hidden.stride(-1) == 1 else \
        StackCall(call.hidden.contiguous(), call.extras)


def _in_layout(hidden: torch.Tensor, stride) -> torch.Tensor:
    """`hidden` (a kernel's contiguous output) with the strides the blocks' output had where its
    channels were strided: the model's tail then reads a skipped call's output as it reads a
    computed one's, so graphed and eager calls give the same bits (ACE-Step's RMSNorm gives
    other bits over a transposed tensor)."""
    if stride is None or hidden.stride() == stride:
        return hidden
    return torch.empty_strided(hidden.shape, stride, dtype=hidden.dtype,
                               device=hidden.device).copy_(hidden)


class BranchState:
    """What one CFG branch (or one call-order slot) keeps between steps."""

    def __init__(self):
        self.signature = None     # the stack's hidden: shape, dtype, device
        self.prev: Optional[torch.Tensor] = None      # last modulated input
        self.residual: Optional[torch.Tensor] = None  # last computed stack residual
        self.layout = None     # the stack output's strides where its channels are strided
        # Forecasting (forecast_order > 0): the computed residuals before `residual`, newest
        # first, and for each entry of [residual] + older the sampler time at which each sample
        # computed it.
        self.older: list = []
        self.times: list = []
        # While CUDA graphs serve the branch, its step, accumulator, skips and last timestep
        # live on the device (cachekern.teacache.device_decision.DeviceDecision), not here.
        self.device_decision = None
        # The ring of history slots a graph forecasts from (cachekern.teacache.device_forecast).
        self.slots = None
        self.new_generation()

    def new_generation(self):
        self.residual = None
        self.older = []
        self.times = []
        self.step = -1
        self.last_timestep = None
        self.accumulated = None  # float (global) or list of floats (per sample)
        self.skips = None

    def nbytes(self) -> int:
        held = {id(t): t for t in [self.prev, self.residual] + self.older + (self.slots or [])
                if t is not None}
        return sum(t.numel() * t.element_size() for t in held.values())


class TeaCacheRuntime:
    def __init__(self, policy, adapter, model):
        self.policy = policy
        self.adapter = adapter
        self.polynomial = policy.polynomial_for(adapter.coefficient_key(model))
        # Imported when a model is patched, not with `import cachekern`: the kernels pull in
        # Triton, which a BlockCache-only user need not load.
        from cachekern import kernels

        self.kernels = kernels
        # This call's (Indicator, modulated input or None): block 0 is served from it.
        self.indicator = None

    def check_model(self, blocks):
        if self.policy.reuse_modulated and not self.adapter.supports_reuse_modulated(blocks):
            raise ValueError(
                f"TeaCache: reuse_modulated=True needs block 0 to start with a plain "
                f"AdaLayerNormZero (FLUX, SD3, HunyuanVideo); this "
                f"{self.adapter.model_class}'s block 0 has "
                f"{type(getattr(blocks[0], 'norm1', None)).__name__}")

    # -- the indicator ------------------------------------------------------------------------
    def _sums(self, blocks, call: StackCall, state: BranchState):
        """Per-sample (diff, prev) sums of the indicator's change as device tensors, or None on
        the first call; state.prev becomes this call's modulated input."""
        self.indicator = None  # set again below when block 0 may be served from it
        if self.policy.parity:
            m = self.adapter.reference_modulated_input(blocks, call)
            sums = None
            if state.prev is not None and state.prev.shape == m.shape:
                # The published arithmetic: means in the tensor's dtype, divided in it too.
                rel = (m - state.prev).abs().mean() / state.prev.abs().mean()
                sums = (rel.reshape(1).float(), torch.ones(1, device=m.device))
            state.prev = m
            return sums
        ind = self.adapter.indicator(blocks, call)
        if ind.embedding is not None:
            if state.prev is None or state.prev.shape != ind.embedding.shape:
                state.prev = ind.embedding.float().clone()
                return None
            return self._change(ind, call, state.prev)
        if state.prev is None or state.prev.shape != call.hidden.shape:
            state.prev = self.kernels.modulate(call.hidden, ind.scale, ind.shift, norm=ind.norm,
                                               eps=ind.eps)
            sums = None
        else:
            sums = self._change(ind, call, state.prev)
        self.indicator = (ind, state.prev if self.policy.reuse_modulated else None)
        return sums

    def _change(self, ind, call: StackCall, prev):
        """Per-sample (diff, prev) sums of the indicator's change from `prev`, which becomes
        this call's modulated input (or embedding) in place: no host read, so a CUDA graph
        captures it as it is."""
        if ind.embedding is not None:  # a [B, ...] embedding: tiny, plain PyTorch suffices
            e = ind.embedding.float()
            diff = (e - prev).abs().flatten(1).sum(1)
            prev_sum = prev.abs().flatten(1).sum(1)
            prev.copy_(e)
            return diff, prev_sum
        return self.kernels.modulated_distance(call.hidden, prev, ind.scale, ind.shift,
                                               norm=ind.norm, eps=ind.eps, out_modulated=prev)

    # -- one call -----------------------------------------------------------------------------
    def run(self, model, call: StackCall, blocks, state: BranchState, timestep, num_steps,
            shard=None):
        """One eager call: decides, then runs or skips the stack. Returns (the stack's output,
        the decision record: step, timestep, compute (per sample), rel_l1, accumulated, and
        seconds, the host time spent deciding). Under context parallelism (`shard`, a
        cachekern.models.context_parallel.StackShard) the rank decides from the sums of every
        rank's slice and keeps the residual of its own."""
        start = time.perf_counter()
        dense = self.begin(call, state)
        if shard is not None:
            if self.policy.parity:
                raise ValueError("TeaCache(parity=True) reproduces the published one-GPU "
                                 "arithmetic; under context parallelism use parity=False")
            dense = StackCall(shard.local(dense.hidden).contiguous(), dense.extras)
        if self.policy.compute_steps is not None:     # a static schedule needs no indicator
            self.indicator, sums = None, None
        else:
            sums = self._sums(blocks, dense, state)
            if shard is not None and sums is not None:     # one collective a call
                total = shard.sum_across_ranks(torch.cat([sums[0].float(), sums[1].float()]))
                sums = (total[:len(sums[0])], total[len(sums[0]):])
        read = self.decision_inputs(timestep, sums, call.hidden.device)
        values = read.tolist() if read is not None else []     # the one host transfer
        decision = self.decide(state, values, sums is not None, timestep,
                               call.hidden.shape[0], num_steps)
        decision["seconds"] = time.perf_counter() - start
        return self._execute(model, call, dense, blocks, state, decision), decision

    @staticmethod
    def decision_inputs(timestep, sums, device):
        """Everything the decision reads, as one fp32 device vector (one host transfer):
        [timestep (when a tensor)] + per-sample diff sums + per-sample prev sums (when there
        are sums); None when there is nothing to read. `decide` takes it back apart."""
        parts = []
        if isinstance(timestep, torch.Tensor):
            parts.append(timestep.reshape(-1)[:1].to(device=device, dtype=torch.float32))
        if sums is not None:
            parts += [sums[0].float(), sums[1].float()]
        return torch.cat(parts) if parts else None

    def begin(self, call: StackCall, state: BranchState) -> StackCall:
        """Starts the branch afresh on another resolution, dtype or device; returns `call` with
        a last-dim-contiguous hidden. (The kernels need the channel dimension contiguous; some
        models, HunyuanVideo, hand their blocks a transposed view. The blocks still get the
        original tensor, so a computed step stays bit for bit the model's own.)"""
        signature = (tuple(call.hidden.shape), call.hidden.dtype, call.hidden.device)
        if state.signature != signature:
            state.__init__()
            state.signature = signature
        return _last_dim_contiguous(call)

    def decide(self, state: BranchState, values, has_sums, timestep, batch, num_steps):
        """The decision from what the host read: [timestep (when a tensor)] + per-sample diff
        sums + per-sample prev sums (when has_sums). Advances the branch's step and
        accumulator; returns the record of the call."""
        values = list(values)
        t = values.pop(0) if isinstance(timestep, torch.Tensor) else \
            (float(timestep) if timestep is not None else None)
        if t is not None and state.last_timestep is not None and t > state.last_timestep:
            state.new_generation()  # the timestep went back up: a new generation started
            has_sums = False
        state.last_timestep = t
        state.step += 1
        schedule = self.policy.compute_steps
        if schedule is not None:       # static: the schedule decides, for every sample
            computed = state.residual is None or state.step >= len(schedule) or \
                schedule[state.step]
            per_sample = self.policy.decision == "per_sample"
            return dict(step=state.step, timestep=t, compute=[computed] * batch,
                        rel_l1=[float("nan")] * batch if per_sample else float("nan"),
                        accumulated=[0.0] * batch if per_sample else 0.0)
        forced = (not has_sums or state.residual is None or
                  state.step < self.policy.warmup_steps or
                  (self.policy.compute_last_step and num_steps is not None
                   and state.step >= num_steps - 1))
        per_sample = self.policy.decision == "per_sample"
        if has_sums:
            diff, prev = values[:len(values) // 2], values[len(values) // 2:]
        if per_sample:
            rels = [d / p if p else float("nan") for d, p in zip(diff, prev)] if has_sums \
                else [float("nan")] * batch
            acc = state.accumulated if state.accumulated is not None else [0.0] * batch
            skips = state.skips if state.skips is not None else [0] * batch
            decisions = [self.policy.decide(acc[b], skips[b], rels[b], self.polynomial, forced)
                         for b in range(batch)]
            compute = [d[0] for d in decisions]
            state.accumulated = [d[1] for d in decisions]
            state.skips = [0 if c else s + 1 for c, s in zip(compute, skips)]
            record_rel, record_acc = rels, list(state.accumulated)
        else:
            rel = (sum(diff) / sum(prev) if sum(prev) else float("nan")) if has_sums \
                else float("nan")
            acc = state.accumulated if state.accumulated is not None else 0.0
            skips = state.skips if state.skips is not None else 0
            computed, state.accumulated, _ = self.policy.decide(acc, skips, rel, self.polynomial,
                                                                forced)
            state.skips = 0 if computed else skips + 1
            compute = [computed] * batch
            record_rel, record_acc = rel, state.accumulated
        return dict(step=state.step, timestep=t, compute=compute, rel_l1=record_rel,
                    accumulated=record_acc)

    def _execute(self, model, call, dense, blocks, state, decision):
        """Runs or skips the stack; `dense` is `call` with a last-dim-contiguous hidden."""
        compute = decision["compute"]
        now = self._time(decision)
        if all(compute):
            ind, modulated = self.indicator or (None, None)
            if modulated is not None:  # reuse_modulated: block 0's norm1 is served
                with serving(blocks[0], "norm1", self.adapter.norm1_output(ind, modulated)):
                    out = self.adapter.run_blocks(model, call, blocks)
            elif ind is not None:      # block 0's modulation projection is served
                with self.adapter.serving_projection(blocks, ind):
                    out = self.adapter.run_blocks(model, call, blocks)
            else:
                out = self.adapter.run_blocks(model, call, blocks)
            self._keep(state, out.hidden, dense.hidden, now)
            return out
        hidden = _in_layout(self._skipped(dense.hidden, state, now), state.layout)
        if not any(compute):
            return StackCall(hidden, call.extras)
        # Per sample: compute only the samples that need it, reuse for the rest.
        index = torch.tensor([b for b, c in enumerate(compute) if c], device=call.hidden.device)
        sub = self.adapter.select(call, index)
        sub_out = self.adapter.run_blocks(model, sub, blocks)
        hidden[index] = sub_out.hidden
        fresh = self._kept(sub_out.hidden.contiguous(), dense.hidden[index])
        self._keep_samples(state, fresh, index, [b for b, c in enumerate(compute) if c], now)
        extras = dict(call.extras)
        for name, value in sub_out.extras.items():
            full = call.extras.get(name)
            if isinstance(value, torch.Tensor) and isinstance(full, torch.Tensor) \
                    and value is not sub.extras.get(name) and full.shape[:1] == call.hidden.shape[:1]:
                merged = full.clone()
                merged[index] = value
                extras[name] = merged
        return StackCall(hidden, extras)

    # -- the kept residuals and their forecast -------------------------------------------------
    def _time(self, decision):
        """The sampler time a forecast extrapolates in: the timestep the model was called with,
        or the step index (forecast_time="step", or a model called without a timestep)."""
        if self.policy.forecast_time == "timestep" and decision["timestep"] is not None:
            return float(decision["timestep"])
        return float(decision["step"])

    def _keep(self, state, output, x, now):
        """A computed call's residual, output − x (or its output, forecast_of="output"), written
        over the oldest kept one's buffer (the history is a ring: no entry is copied)."""
        ring = [] if state.residual is None else [state.residual] + state.older
        ring = [r for r in ring if r.shape == output.shape]
        full = len(ring) > self.policy.forecast_order
        buffer = ring[-1] if full else None
        state.residual = self._kept(output.contiguous(), x, buffer)
        state.layout = output.stride() if output.stride(-1) != 1 else None
        state.older = ring[:-1] if full else ring
        times = state.times[:len(state.older)]
        state.times = [[now] * x.shape[0]] + times

    def _kept(self, output, x, buffer=None):
        """What a computed call keeps: its residual, or its output itself."""
        if self.policy.forecast_of == "output":
            return buffer.copy_(output) if buffer is not None else output.clone()
        return self.kernels.residual_capture(output, x, out=buffer)[0]

    def _keep_samples(self, state, fresh, index, samples, now):
        """The residuals of the samples that computed (per-sample decisions): each of their
        history entries moves one place back (these copies are the price of per-sample
        histories), the fresh residual in front."""
        order = self.policy.forecast_order
        if order > 0:
            if len(state.older) < order:     # a new, empty slot: zeros, never uninitialised
                state.older.append(torch.zeros_like(state.residual))
                state.times.append([None] * state.residual.shape[0])
            entries = [state.residual] + state.older
            for j in range(len(entries) - 1, 0, -1):
                entries[j][index] = entries[j - 1][index]
                for b in samples:
                    state.times[j][b] = state.times[j - 1][b]
        state.residual[index] = fresh
        for b in samples:
            state.times[0][b] = now

    def _basis(self, times, now):
        basis = self.kernels.taylor_weights if self.policy.forecast_basis == "taylor" else \
            self.kernels.lagrange_weights
        return basis(times, now)

    def _skipped(self, x, state, now):
        """x plus the cached residual (order 0), or plus the residual extrapolated to `now`
        through the last forecast_order + 1 computed ones (forecast_basis in the sampler's
        time, or the weights fitted for this step); with forecast_of="output", the output
        itself, kept or extrapolated."""
        as_output = self.policy.forecast_of == "output"
        entries = [state.residual] + state.older
        fitted = self.policy.forecast_weights
        fitted = fitted[state.step] if fitted is not None and state.step < len(fitted) else None
        if fitted is not None and len(fitted) <= len(entries):
            rows = [fitted] * x.shape[0]      # a static schedule: every sample alike
        else:
            if self.policy.forecast_order == 0 or not state.older:
                return state.residual.clone() if as_output else \
                    self.kernels.residual_reuse(x, state.residual)
            entries = entries[:self.policy.forecast_order + 1]
            # Each sample extrapolates through as many of its entries as it has, with distinct
            # times (per-sample decisions give samples different histories); zeros pad.
            counts, rows, made = [], [], {}
            for ts in zip(*state.times[:len(entries)]):
                if ts not in made:    # samples with one history (global decisions) share it
                    n = next(n for n in range(len(ts), 0, -1)
                             if None not in ts[:n] and len(set(ts[:n])) == n)
                    made[ts] = (n, self._basis(ts[:n], now) + [0.0] * (len(ts) - n))
                counts.append(made[ts][0])
                rows.append(made[ts][1])
            if max(counts) == 1:
                return state.residual.clone() if as_output else \
                    self.kernels.residual_reuse(x, state.residual)
            rows = [row[:max(counts)] for row in rows]
        shared = all(row == rows[0] for row in rows)    # one row moves, expanded on the device
        weights = torch.tensor(rows[:1] if shared else rows, dtype=torch.float32)
        if x.device.type == "cuda":     # no synchronisation: a pinned copy, in stream order
            weights = weights.pin_memory().to(x.device, non_blocking=True)
        if shared:
            weights = weights.expand(len(rows), -1)
        return self.kernels.residual_forecast(None if as_output else x, entries[:len(rows[0])],
                                              weights)

    # -- one call inside a CUDA graph (cachekern.teacache.graphs) -----------------------------
    def graph_warm_up(self, model, call: StackCall, blocks, state: BranchState, decision,
                      timestep):
        """Runs once the kernels a capture will launch, on scratch copies of the state, so that
        Triton compiles them outside the capture: leaves the branch untouched and skips the
        blocks (the branch's first, eager call ran them at these shapes)."""
        dense = _last_dim_contiguous(call)
        sums = (None, None)
        if self.policy.compute_steps is None:
            sums = self._change(self.adapter.indicator(blocks, dense), dense, state.prev.clone())
        decision(sums[0], sums[1], timestep)
        forecast = decision.forecast
        slots = forecast.slots if forecast is not None else [state.residual.clone()]
        hidden = self.kernels.residual_reuse(dense.hidden, slots[0])
        self.kernels.residual_capture(hidden, dense.hidden, out=slots[0])
        if decision.per_sample:     # each sub-batch size: the blocks (a compiled block
            sizes = {}              # specialises on it) and the kernels, outside the capture
            for index in decision.indices.values():
                sizes.setdefault(len(index), index)
            for index in sizes.values():
                sub_out = self.adapter.run_blocks(model, self.adapter.select(call, index), blocks)
                self._kept(sub_out.hidden.contiguous(), dense.hidden[index])
        if forecast is not None:
            batch = dense.hidden.shape[0]
            for length in forecast.lengths:
                self.kernels.residual_forecast(dense.hidden, slots,
                                               forecast.weights_for(length, batch), out=hidden,
                                               slot_order=forecast.slot_order)
        return StackCall(hidden, call.extras)

    def graph_capture(self, model, call: StackCall, blocks, state: BranchState, decision,
                      timestep, run_if, prelude=None):
        """The stack as TeaCache(cuda_graphs=True) captures it: the indicator (none for a
        static schedule), the decision on the device, then conditional nodes through
        `run_if(flag, body)`: compute (the blocks, the new residual) or skip (the cached
        residual, or with a forecast one capture per history slot and one forecast per length
        the plan can choose; cachekern.teacache.device_forecast). `prelude()` runs first in the compute
        branch (work deferred there from outside the stack)."""
        dense = _last_dim_contiguous(call)
        ind = None
        if self.policy.compute_steps is None:
            ind = self.adapter.indicator(blocks, dense)
            decision(*self._change(ind, dense, state.prev), timestep)
        else:
            decision(None, None, timestep)
        forecast = decision.forecast

        def compute():
            if prelude is not None:
                prelude()
            if ind is None:
                out = self.adapter.run_blocks(model, call, blocks)
            else:
                with self.adapter.serving_projection(blocks, ind):
                    out = self.adapter.run_blocks(model, call, blocks)
            if forecast is None:
                self.kernels.residual_capture(out.hidden.contiguous(), dense.hidden,
                                              out=state.residual)
            return out

        def restore_extras():
            for name, value in out.extras.items():   # what the blocks would have changed
                given = call.extras.get(name)
                if value is not given and isinstance(value, torch.Tensor) and \
                        isinstance(given, torch.Tensor):
                    value.copy_(given)

        def skip():
            self.kernels.residual_reuse(dense.hidden, state.residual, out=written)
            into_output()
            restore_extras()

        def into_output():    # the kernels write contiguously; the blocks' layout is kept
            if written is not out.hidden:
                out.hidden.copy_(written)

        out = run_if(decision.compute, compute)
        written = out.hidden if out.hidden.stride(-1) == 1 else torch.empty_like(dense.hidden)
        if forecast is None:
            run_if(decision.skip, skip)
            if decision.per_sample:   # then the samples that compute, one branch per pattern
                for pattern, index in decision.indices.items():
                    run_if(decision.patterns[pattern], lambda index=index: self._graph_samples(
                        model, call, dense, blocks, state, index, out, prelude))
            return out
        batch = dense.hidden.shape[0]
        for j, slot in enumerate(forecast.slots):
            run_if(forecast.capture[j], lambda slot=slot: self.kernels.residual_capture(
                out.hidden.contiguous(), dense.hidden, out=slot))
        run_if(decision.skip, restore_extras)
        for length in forecast.lengths:
            def extrapolate(length=length):
                self.kernels.residual_forecast(
                    dense.hidden, forecast.slots, forecast.weights_for(length, batch),
                    out=written, slot_order=forecast.slot_order)
                into_output()
            run_if(forecast.forecast[length - 1], extrapolate)
        return out

    def _graph_samples(self, model, call, dense, blocks, state, index, out, prelude):
        """One pattern's branch of per-sample decisions under graphs: what `_execute` does for
        the samples `index` after the skip branch wrote every sample's reuse into `out`."""
        if prelude is not None:
            prelude()
        sub = self.adapter.select(call, index)
        sub_out = self.adapter.run_blocks(model, sub, blocks)
        out.hidden[index] = sub_out.hidden
        state.residual[index] = self._kept(sub_out.hidden.contiguous(), dense.hidden[index])
        for name, value in sub_out.extras.items():
            full = out.extras.get(name)
            if isinstance(value, torch.Tensor) and isinstance(full, torch.Tensor) \
                    and value is not sub.extras.get(name) and full is not call.extras.get(name) \
                    and full.shape[:1] == call.hidden.shape[:1]:
                full[index] = value
