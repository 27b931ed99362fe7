"""Pure-Python block-cache engine: the fallback used only when cachekern.store._C cannot be loaded.

It keeps the native engine's semantics (tiers, victim order, clean host copies, statistics) with
torch operations: host copies are pinned tensors from torch's caching host allocator, which
reuses freed blocks, and copies run on the side stream ordered by torch events.
"""

import threading
from dataclasses import dataclass
from typing import Optional

import torch

from cachekern.store.errors import CapacityError



@dataclass
class _Entry:
    nbytes: int
    device: torch.device
    on_device: bool = True
    host: Optional[torch.Tensor] = None  # clean host copy (uint8), if any
    last_use: int = 0
    next_use: Optional[int] = None
    event: Optional["torch.cuda.Event"] = None
    pending: bool = False


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


class PythonEngine:
    kind = "python"

    def __init__(self, device_budget: int, host_budget: int):
        self._device_budget = device_budget
        self._host_budget = host_budget
        self._entries = {}
        self._tick = 0
        self._lock = threading.Lock()
        self._counters = dict(hits=0, misses=0, spills=0, prefetches=0, bytes_device_to_host=0,
                              bytes_host_to_device=0, device_bytes=0, peak_device_bytes=0)

    # -- tier bookkeeping ---------------------------------------------------------------------
    def _add_device_bytes(self, nbytes):
        c = self._counters
        c["device_bytes"] += nbytes
        c["peak_device_bytes"] = max(c["peak_device_bytes"], c["device_bytes"])

    def _victims(self, need, exclude):
        if need <= 0:
            return []
        candidates = [(i, e) for i, e in self._entries.items()
                      if i != exclude and e.on_device and e.nbytes > 0]
        # Farthest planned next use first (unplanned = never), then least recently used.
        candidates.sort(key=lambda ie: (-(ie[1].next_use if ie[1].next_use is not None
                                          else float("inf")), ie[1].last_use))
        victims = []
        for entry_id, entry in candidates:
            if need <= 0:
                break
            victims.append(entry_id)
            need -= entry.nbytes
        return victims

    def insert(self, entry_id, nbytes, device):
        with self._lock:
            if entry_id in self._entries:
                self._erase(entry_id)
            self._tick += 1
            self._entries[entry_id] = _Entry(nbytes, device, last_use=self._tick)
            self._add_device_bytes(nbytes)
            if self._device_budget < 0:
                return []
            if nbytes > self._device_budget:
                return [entry_id]
            return self._victims(self._counters["device_bytes"] - self._device_budget, entry_id)

    def make_room(self, nbytes, exclude):
        with self._lock:
            if self._device_budget < 0:
                return []
            return self._victims(self._counters["device_bytes"] + nbytes - self._device_budget,
                                 exclude)

    def _host_in_use(self):
        return sum(e.nbytes for e in self._entries.values() if e.host is not None)

    def _allocate_host(self, nbytes, for_id, pinned):
        if self._host_budget >= 0 and self._host_in_use() + nbytes > self._host_budget:
            redundant = sorted((e for i, e in self._entries.items()
                                if i != for_id and e.on_device and e.host is not None),
                               key=lambda e: e.last_use)
            for entry in redundant:
                entry.host = None
                if self._host_in_use() + nbytes <= self._host_budget:
                    break
            if self._host_in_use() + nbytes > self._host_budget:
                raise CapacityError(
                    f"BlockCache cannot hold an entry of {nbytes} bytes: device budget "
                    f"{self._device_budget} bytes ({self._counters['device_bytes']} in use), host "
                    f"budget {self._host_budget} bytes ({self._host_in_use()} in use)")
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)

    # -- copies -------------------------------------------------------------------------------
    def spill(self, entry_id, tensor, caller, side):
        with self._lock:
            entry = self._entries[entry_id]
            if entry.host is None:
                host = self._allocate_host(entry.nbytes, entry_id, pinned=tensor.is_cuda)
                if entry.nbytes:
                    if tensor.is_cuda:
                        side.wait_stream(caller)
                        with torch.cuda.stream(side):
                            host.copy_(_bytes_of(tensor), non_blocking=True)
                        entry.event = torch.cuda.Event()
                        entry.event.record(side)
                    else:
                        host.copy_(_bytes_of(tensor))
                    self._counters["bytes_device_to_host"] += entry.nbytes
                entry.host = host
            entry.on_device = False
            entry.pending = False
            self._counters["device_bytes"] -= entry.nbytes
            self._counters["spills"] += 1

    def fetch(self, entry_id, dst, caller, side, *, keep, wait, is_prefetch):
        with self._lock:
            entry = self._entries[entry_id]
            if entry.nbytes:
                if dst.is_cuda:
                    side.wait_stream(caller)
                    with torch.cuda.stream(side):
                        _bytes_of(dst).copy_(entry.host, non_blocking=True)
                    entry.event = torch.cuda.Event()
                    entry.event.record(side)
                    if wait:
                        caller.wait_event(entry.event)
                    else:
                        entry.pending = True
                else:
                    _bytes_of(dst).copy_(entry.host)
                self._counters["bytes_host_to_device"] += entry.nbytes
            if is_prefetch:
                self._counters["prefetches"] += 1
            if keep:
                entry.on_device = True
                self._add_device_bytes(entry.nbytes)

    def wait_ready(self, entry_id, caller):
        with self._lock:
            entry = self._entries[entry_id]
            if entry.pending:
                caller.wait_event(entry.event)
                entry.pending = False

    # -- metadata -----------------------------------------------------------------------------
    def touch(self, entry_id):
        with self._lock:
            entry = self._entries[entry_id]
            self._tick += 1
            entry.last_use = self._tick
            self._counters["hits" if entry.on_device else "misses"] += 1

    def mark_dirty(self, entry_id):
        with self._lock:
            entry = self._entries[entry_id]
            if entry.on_device:
                entry.host = None

    def set_next_use(self, entry_id, position):
        with self._lock:
            self._entries[entry_id].next_use = position

    def on_device(self, entry_id):
        with self._lock:
            return self._entries[entry_id].on_device

    def _erase(self, entry_id):
        entry = self._entries.pop(entry_id)
        if entry.on_device:
            self._counters["device_bytes"] -= entry.nbytes

    def remove(self, entry_id):
        with self._lock:
            self._erase(entry_id)

    def clear(self):
        with self._lock:
            for entry_id in list(self._entries):
                self._erase(entry_id)

    def stats(self):
        with self._lock:
            entries = self._entries.values()
            out = dict(self._counters)
            out.update(
                host_bytes=self._host_in_use(),
                host_reserved_bytes=self._host_in_use(),
                host_chunk_allocations=0,
                host_waits=0,
                entries=len(self._entries),
                device_entries=sum(e.on_device for e in entries),
                host_entries=sum(not e.on_device for e in entries),
                pinned=torch.cuda.is_available(),
            )
            return out
