"""Block Caching at run time: a wrapper on each cached block computes it (keeping its residual,
written once by residual_capture) or reuses the residual (residual_reuse, with the schedule's
scale and shift) as the static schedule says for the current step. No host synchronisation and no
data-dependent control flow: the step index is the call count of the CFG branch."""

import contextlib
import importlib
import itertools

import torch

from cachekern.block_cache import BlockCache
from cachekern.block_units import cached_units


_NO_OUTPUT = object()   # a stream the block returns as None (e.g. SD3's last block's context)


def _scaled(output, scale, shift, channel_dim):
    """A cached output, as a new tensor (the caller may modify what it gets), with the
    per-channel scale and shift."""
    if scale is None:
        return output.clone()
    shape = [1] * output.dim()
    shape[channel_dim] = -1
    return (output.float() * scale.view(shape) + shift.view(shape)).to(output.dtype)


class BlockCachingHandle:
    def __init__(self, model, policy):
        self.model = model
        self.policy = policy
        self.profile = policy.profile
        self.units = cached_units(model, self.profile.resnets)
        self.profile.check_units(self.units, "BlockCaching")
        self.schedule = policy.schedule()
        params = self.profile.scale_shift_for(self.schedule) \
            if policy.scale_shift == "fit" else {}
        # On the model's device up front: no copies (and nothing a CUDA graph could not
        # capture) while it runs.
        device = next(model.parameters()).device
        self.params = {key: tuple(t.to(device) for t in pair) for key, pair in params.items()}
        self.kernels = importlib.import_module("cachekern.triton_kernels")
        self.history = []
        # (branch, unit, stream) -> residual: a dict, or a BlockCache within the device budget
        self._residuals = {} if policy.device_budget_bytes is None else \
            BlockCache(policy.device_budget_bytes)
        self._outputs_cached = set()  # keys whose tensor is the block's output, not a residual
        self._no_output = set()       # keys of streams the block returned as None
        self._counts = {}
        self._call_counter = itertools.count()
        self._context = None
        self._current = None
        self._stats = dict(calls=0, block_calls=0, blocks_computed=0, blocks_reused=0)
        # What each block's instance held as `forward` before (another tool's wrapper, or
        # nothing), restored exactly by close().
        self._previous = [unit.module.__dict__.get("forward") for unit in self.units]
        for index, unit in enumerate(self.units):
            unit.module.forward = self._wrap(index, unit, unit.module.forward)

    # -- public ---------------------------------------------------------------------------------
    def stats(self) -> dict:
        """calls (model calls), block_calls, blocks_computed, blocks_reused, the schedule's
        compute fraction, and bytes_held (cached residuals)."""
        out = dict(self._stats)
        out["schedule_compute"] = sum(c for row in self.schedule for c in row) / \
            sum(len(row) for row in self.schedule)
        if isinstance(self._residuals, BlockCache):
            out["block_cache"] = self._residuals.stats()
        else:
            out["bytes_held"] = sum(r.numel() * r.element_size() for r in self._residuals.values())
        return out

    def reset(self):
        """Forgets cached residuals and step counters: the next call is step 0."""
        self._residuals.clear()
        self._no_output.clear()
        self._counts.clear()
        self.history.clear()
        self._call_counter = itertools.count()

    def close(self):
        for unit, previous in zip(self.units, self._previous):
            unit.module.__dict__.pop("forward", None)
            if previous is not None:
                unit.module.forward = previous
        self._residuals.clear()

    # -- plumbing used by patching ----------------------------------------------------------------
    @contextlib.contextmanager
    def cache_context(self, original, name, **kwargs):
        self._context = name
        try:
            with original(name, **kwargs):
                yield
        finally:
            self._context = None

    def forward(self, original_forward, args, kwargs):
        if self._context is not None:
            branch = self._context
        else:
            branch = f"call{next(self._call_counter) % self.policy.calls_per_step}"
        count = self._counts.get(branch, 0)
        step = count % self.profile.steps
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if isinstance(timestep, (int, float)) or (isinstance(timestep, torch.Tensor) and
                                                  timestep.device.type == "cpu"):
            # Readable without a host synchronisation: check the schedule applies. (On a GPU
            # the pipeline's timesteps live there, and reading them would cost a sync a step.)
            value = float(timestep if not isinstance(timestep, torch.Tensor)
                          else timestep.reshape(-1)[0])
            self.profile.check_timestep(step, value)
        self._current = (branch, step)
        if isinstance(self._residuals, BlockCache):
            self._plan(branch, step)
        try:
            out = original_forward(*args, **kwargs)
        finally:
            self._current = None
        self._counts[branch] = count + 1
        self._stats["calls"] += 1
        self.history.append(dict(step=step, branch=branch,
                                 computed=[row[step] for row in self.schedule]))
        return out

    # -- per block ------------------------------------------------------------------------------
    def _wrap(self, index, unit, forward):
        compute_at = [row for row in self.schedule][index]

        def cached(*args, **kwargs):
            if self._current is None:          # called outside the model's forward
                return forward(*args, **kwargs)
            branch, step = self._current
            inputs = unit.io.inputs(args, kwargs)
            keys = [(branch, index, k) for k in range(len(inputs))]
            reusable = not compute_at[step] and all(
                key in self._no_output or key in self._residuals for key in keys)
            stored = [_NO_OUTPUT if key in self._no_output else
                      self._residuals.get(key) if reusable or isinstance(self._residuals, dict)
                      and key in self._residuals else None for key in keys]
            self._stats["block_calls"] += 1
            if reusable:
                self._stats["blocks_reused"] += 1
                outs = []
                for k, (x, r) in enumerate(zip(inputs, stored)):
                    if r is _NO_OUTPUT:
                        outs.append(None)
                        continue
                    self._prefetch_after(branch, index, step)
                    scale, shift = self._scale_shift(index, step, k, x.device)
                    if (branch, index, k) in self._outputs_cached:
                        outs.append(_scaled(r, scale, shift, unit.io.channel_dim))
                    else:
                        outs.append(self.kernels.residual_reuse(
                            x.contiguous(), r, scale, shift, channel_dim=unit.io.channel_dim))
                return unit.io.result(outs, args, kwargs)
            self._stats["blocks_computed"] += 1
            result = forward(*args, **kwargs)
            for key, x, out, r in zip(keys, inputs, unit.io.outputs(result), stored):
                if out is None or x is None:
                    self._no_output.add(key)
                    continue
                self._no_output.discard(key)
                buffer = r if isinstance(r, torch.Tensor) and r.shape == out.shape and \
                    r.dtype == out.dtype else None
                if isinstance(self._residuals, BlockCache):
                    buffer = None   # the cache owns what it was given: a new tensor each time
                if out.shape == x.shape:
                    self._outputs_cached.discard(key)
                    residual = self.kernels.residual_capture(
                        out.contiguous(), x.contiguous(), out=buffer)[0]
                else:    # the block changes the shape: its output itself is kept
                    self._outputs_cached.add(key)
                    residual = buffer.copy_(out) if buffer is not None else out.detach().clone()
                if isinstance(self._residuals, BlockCache):
                    self._residuals.put(key, residual)
                else:
                    self._residuals[key] = residual
            return result
        return cached

    def _reused_units(self, step):
        return [i for i, row in enumerate(self.schedule) if not row[step]]

    def _plan(self, branch, step):
        """Tells the block cache the order the residuals will be needed in (this step's reused
        blocks, then the next steps'), so it spills those needed last, and starts fetching the
        first one this step reuses."""
        steps = self.profile.steps
        order, seen = [], set()
        for ahead in range(steps):
            for i in self._reused_units((step + ahead) % steps):
                for key in self._keys_of(branch, i):
                    if key not in seen:
                        seen.add(key)
                        order.append(key)
        self._residuals.plan(order)
        first = self._reused_units(step)[:1]
        for i in first:
            for key in self._keys_of(branch, i):
                self._residuals.prefetch(key)

    def _keys_of(self, branch, index):
        streams = len(getattr(self.units[index].io, "names", (None,)))
        return [key for key in ((branch, index, k) for k in range(streams))
                if key in self._residuals]

    def _prefetch_after(self, branch, index, step):
        """Starts fetching the residual of the next block this step reuses."""
        if not isinstance(self._residuals, BlockCache):
            return
        later = [i for i in self._reused_units(step) if i > index][:1]
        for i in later:
            for key in self._keys_of(branch, i):
                self._residuals.prefetch(key)

    def _scale_shift(self, index, step, k, device):
        scale, shift = self.params.get((index, step, k), (None, None))
        if scale is not None and scale.device != device:
            raise ValueError(f"BlockCaching: block {self.units[index].name} runs on {device}, "
                             f"but the model was patched on {scale.device}; patch after moving "
                             f"the model")
        return scale, shift
