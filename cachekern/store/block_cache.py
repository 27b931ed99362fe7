"""`BlockCache`: tensors kept between denoising steps, within a device-memory budget.

Policies keep tensors from one step to the next (TeaCache one residual per CFG branch; Block
Caching one per cached block per branch). For video models these outgrow the GPU, so the cache
holds entries in a device tier up to ``device_budget_bytes`` and moves the rest to pinned host
memory with asynchronous copies on a side stream, bringing them back on ``get``/``prefetch``.

The engine (which entry leaves first, the pinned pool, the copies, the counters) is the native
extension ``cachekern.store._C``; this class owns the tensors and talks torch. When the extension cannot
be loaded a pure-Python engine with the same behaviour is used, with one warning saying why.

Ownership: ``put`` stores a *reference* to a contiguous tensor (a non-contiguous one is copied
into a contiguous one). The cache then owns that memory: do not write to a tensor after putting
it, unless on the current stream and before the cache could spill it. In-place writes to a
tensor returned by ``get`` are detected (torch's version counter) and re-copied on the next spill.
"""

import itertools
import threading
from dataclasses import dataclass
from typing import Hashable, Iterable, Optional

import torch

from cachekern._warnings import warn
from cachekern.store import _native
from cachekern.store.errors import CapacityError
from cachekern.store.native_engine import NativeEngine
from cachekern.store.python_engine import PythonEngine

__all__ = ["BlockCache", "CapacityError"]

_fallback_warned = False


def _make_engine(device_budget: int, host_budget: int, engine: str):
    global _fallback_warned
    if engine not in ("auto", "native", "python"):
        raise ValueError(f"BlockCache: engine must be 'auto', 'native' or 'python', got {engine!r}")
    if engine == "native" or (engine == "auto" and _native.native is not None):
        if _native.native is None:
            raise RuntimeError(f"BlockCache: engine='native' but cachekern.store._C could not be loaded: "
                               f"{_native.load_error}")
        return NativeEngine(device_budget, host_budget)
    if engine == "auto" and not _fallback_warned:
        _fallback_warned = True
        warn(f"cachekern: the native extension cachekern.store._C could not be loaded "
             f"({_native.load_error}); BlockCache uses the pure-Python engine (same API)",
             RuntimeWarning)
    return PythonEngine(device_budget, host_budget)


def _check_budget(name: str, value) -> int:
    if value is None:
        return -1
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"BlockCache: {name} must be None (unlimited) or an int >= 0, "
                         f"got {value!r}")
    return value


@dataclass
class _Slot:
    key: Hashable
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device
    nbytes: int
    tensor: Optional[torch.Tensor]  # the device-tier copy; None while only on the host
    version: int = 0                # tensor._version when the engine last saw it unchanged


class BlockCache:
    """Tensors keyed by hashable keys (e.g. ``(block_index, branch)`` tuples or strings).

    Args:
        device_budget_bytes: most bytes kept on the device; None for no limit. When a ``put`` or
            a ``get`` would exceed it, entries move to host memory: the least recently used
            first, or the one used farthest in the future once ``plan`` has been called. An
            entry larger than the whole budget lives on the host and each ``get`` copies it in.
        host_budget_bytes: most bytes of host memory for spilled entries; None for no limit.
            When neither tier can hold an entry, ``CapacityError`` (a ``MemoryError``) names the
            sizes.
        device: the device whose tensors this cache holds; by default that of the first ``put``.
        engine: "auto" (the native engine when it loads), "native" or "python".
    """

    def __init__(self, device_budget_bytes: Optional[int] = None,
                 host_budget_bytes: Optional[int] = None, *, device=None, engine: str = "auto"):
        self._device_budget = _check_budget("device_budget_bytes", device_budget_bytes)
        host_budget = _check_budget("host_budget_bytes", host_budget_bytes)
        self._engine = _make_engine(self._device_budget, host_budget, engine)
        self._device = torch.device(device) if device is not None else None
        if self._device is not None and self._device.type == "cuda" and self._device.index is None:
            self._device = torch.device("cuda", torch.cuda.current_device())
        self._lock = threading.RLock()
        self._ids = {}    # key -> entry id
        self._slots = {}  # entry id -> _Slot
        self._next_id = itertools.count()
        self._side_streams = {}

    @property
    def engine_kind(self) -> str:
        """"native" or "python": which engine serves this cache."""
        return self._engine.kind

    @property
    def device(self) -> Optional[torch.device]:
        return self._device

    # -- public API -----------------------------------------------------------------------------
    def put(self, key: Hashable, tensor: torch.Tensor) -> None:
        """Stores ``tensor`` under ``key``, replacing any older entry of that key."""
        _check_key("put", key)
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"BlockCache.put: tensor must be a torch.Tensor, got "
                            f"{type(tensor).__name__}")
        with self._lock:
            self._check_device("put", tensor.device)
            stored = tensor if tensor.is_contiguous() else tensor.contiguous()
            entry_id = self._ids.get(key)
            if entry_id is None:
                entry_id = next(self._next_id)
            nbytes = stored.numel() * stored.element_size()
            slot = _Slot(key, stored.shape, stored.dtype, stored.device, nbytes, stored,
                         stored._version)
            self._ids[key] = entry_id
            self._slots[entry_id] = slot
            victims = self._engine.insert(entry_id, nbytes, stored.device)
            try:
                for victim in victims:
                    self._spill(victim)
            except CapacityError:
                # Leave the cache as it was minus this entry: nothing half-stored stays behind.
                self._engine.remove(entry_id)
                del self._ids[key], self._slots[entry_id]
                raise

    def get(self, key: Hashable) -> torch.Tensor:
        """The tensor stored under ``key``, on its original device, ready on the current stream."""
        with self._lock:
            entry_id = self._lookup("get", key)
            slot = self._slots[entry_id]
            self._engine.touch(entry_id)
            if slot.tensor is not None:
                self._engine.wait_ready(entry_id, self._current_stream(slot.device))
                return slot.tensor
            return self._bring_back(entry_id, prefetch=False)

    def prefetch(self, key: Hashable) -> None:
        """Starts bringing ``key``'s entry back to the device without waiting for it."""
        with self._lock:
            entry_id = self._lookup("prefetch", key)
            slot = self._slots[entry_id]
            if slot.tensor is None and self._fits_on_device(slot.nbytes):
                self._bring_back(entry_id, prefetch=True)

    def evict(self, key: Hashable) -> None:
        """Removes ``key``'s entry from both tiers."""
        with self._lock:
            entry_id = self._lookup("evict", key)
            self._engine.remove(entry_id)
            del self._ids[key], self._slots[entry_id]

    def clear(self) -> None:
        """Removes every entry and returns the pooled host memory."""
        with self._lock:
            self._engine.clear()
            self._ids.clear()
            self._slots.clear()

    def plan(self, keys_in_order_of_next_use: Iterable[Hashable]) -> None:
        """Declares which entries are needed next, soonest first.

        When the device budget is exceeded, the entry needed farthest in the future (or never,
        for keys not in the plan) leaves first. Each call replaces the previous plan.
        """
        with self._lock:
            planned = {}
            for position, key in enumerate(keys_in_order_of_next_use):
                planned.setdefault(self._lookup("plan", key), position)
            for entry_id in self._slots:
                self._engine.set_next_use(entry_id, planned.get(entry_id))

    def stats(self) -> dict:
        """Counters: hits, misses, spills, prefetches, bytes_device_to_host, bytes_host_to_device,
        device_bytes and peak_device_bytes, host_bytes (held by entries), host_reserved_bytes
        (pooled), host_chunk_allocations, host_waits (times the host waited for a copy to free a
        pooled block), entries, device_entries, host_entries, pinned, engine."""
        with self._lock:
            out = self._engine.stats()
            out["engine"] = self._engine.kind
            return out

    def __contains__(self, key) -> bool:
        with self._lock:
            try:
                return key in self._ids
            except TypeError:
                return False

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def __repr__(self) -> str:
        budget = "unlimited" if self._device_budget < 0 else f"{self._device_budget} B"
        return (f"BlockCache(entries={len(self)}, device={self._device}, device_budget={budget}, "
                f"engine={self._engine.kind})")

    # -- internals ------------------------------------------------------------------------------
    def _lookup(self, op: str, key: Hashable) -> int:
        _check_key(op, key)
        try:
            return self._ids[key]
        except KeyError:
            raise KeyError(f"BlockCache.{op}: no entry for key {key!r}") from None

    def _check_device(self, op: str, device: torch.device) -> None:
        if self._device is None:
            self._device = device
        elif device != self._device:
            raise ValueError(f"BlockCache.{op}: tensor is on {device}, but this cache holds "
                             f"tensors of {self._device}; use one BlockCache per device")

    def _fits_on_device(self, nbytes: int) -> bool:
        return self._device_budget < 0 or nbytes <= self._device_budget

    def _current_stream(self, device: torch.device):
        return torch.cuda.current_stream(device) if device.type == "cuda" else None

    def _side_stream(self, device: torch.device):
        if device.type != "cuda":
            return None
        stream = self._side_streams.get(device.index)
        if stream is None:
            stream = self._side_streams[device.index] = torch.cuda.Stream(device=device)
        return stream

    def _spill(self, entry_id: int) -> None:
        slot = self._slots[entry_id]
        tensor = slot.tensor
        if tensor._version != slot.version:
            self._engine.mark_dirty(entry_id)  # written in place since its host copy was taken
        side = self._side_stream(slot.device)
        self._engine.spill(entry_id, tensor, self._current_stream(slot.device), side)
        if side is not None:
            # The copy reads this memory on the side stream: the allocator must not hand it out
            # again before that copy is done.
            tensor.record_stream(side)
        slot.tensor = None

    def _bring_back(self, entry_id: int, *, prefetch: bool) -> torch.Tensor:
        slot = self._slots[entry_id]
        keep = self._fits_on_device(slot.nbytes)
        if keep:
            for victim in self._engine.make_room(slot.nbytes, entry_id):
                self._spill(victim)
        dst = torch.empty(slot.shape, dtype=slot.dtype, device=slot.device)
        side = self._side_stream(slot.device)
        self._engine.fetch(entry_id, dst, self._current_stream(slot.device), side, keep=keep,
                           wait=not prefetch, is_prefetch=prefetch)
        if side is not None:
            dst.record_stream(side)
        if keep:
            slot.tensor = dst
            slot.version = dst._version
        return dst


def _check_key(op: str, key) -> None:
    try:
        hash(key)
    except TypeError:
        raise TypeError(f"BlockCache.{op}: key must be hashable (e.g. a (block, branch) tuple or "
                        f"a string), got {type(key).__name__}") from None
