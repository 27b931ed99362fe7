"""Adapter from tensors and torch streams to the native engine's pointers and stream handles."""

import torch

from cachekern.store import _native
from cachekern.store.errors import CapacityError


def _handle(stream) -> int:
    return 0 if stream is None else stream.cuda_stream


def _device_index(device: torch.device) -> int:
    return -1 if device.type == "cpu" else device.index


class NativeEngine:
    """`cachekern.store._C.CacheEngine` behind the tensor-level interface `BlockCache` drives."""

    kind = "native"

    def __init__(self, device_budget: int, host_budget: int):
        self._engine = _native.native.CacheEngine(device_budget, host_budget)

    def insert(self, entry_id, nbytes, device: torch.device):
        return self._engine.insert(entry_id, nbytes, _device_index(device))

    def make_room(self, nbytes, exclude):
        return self._engine.make_room(nbytes, exclude)

    def spill(self, entry_id, tensor, caller, side):
        try:
            self._engine.spill(entry_id, tensor.data_ptr(), _handle(caller), _handle(side))
        except _native.native.CapacityError as exc:
            raise CapacityError(str(exc)) from None

    def fetch(self, entry_id, dst, caller, side, *, keep, wait, is_prefetch):
        self._engine.fetch(entry_id, dst.data_ptr(), _handle(caller), _handle(side), keep, wait,
                           is_prefetch)

    def wait_ready(self, entry_id, caller):
        self._engine.wait_ready(entry_id, _handle(caller))

    def touch(self, entry_id):
        self._engine.touch(entry_id)

    def mark_dirty(self, entry_id):
        self._engine.mark_dirty(entry_id)

    def set_next_use(self, entry_id, position):
        self._engine.set_next_use(entry_id, self._engine.UNPLANNED if position is None else position)

    def on_device(self, entry_id) -> bool:
        return self._engine.on_device(entry_id)

    def remove(self, entry_id):
        self._engine.remove(entry_id)

    def clear(self):
        self._engine.clear()

    def stats(self) -> dict:
        return self._engine.stats()
