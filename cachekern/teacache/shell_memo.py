"""Exact memoization of modules outside the block stack whose output is fixed by a few inputs.

A skipped step still runs everything around the stack, and at FLUX size that is host-bound: the
rotary table FluxPosEmbed rebuilds on every call from the same position ids costs about a third
of the host time of the whole model outside the stack. A pipeline passes the same id tensors on
every step, so while those exact tensor objects are passed again, unmodified (same object, same
version counter), the table from the previous call is returned. Anything else (new tensors, an
in-place change of the ids or of the returned table, a change of grad mode) recomputes. The
output is bit for bit what the module would return.
"""

import torch
from torch import nn


def _versions(value):
    tensors = value if isinstance(value, (tuple, list)) else (value,)
    return tuple(t._version if isinstance(t, torch.Tensor) else None for t in tensors)


class MemoizedModule(nn.Module):
    """Stands in for `module` during a call; `key_inputs` are the forward arguments of the model
    that determine the module's output."""

    def __init__(self, module: nn.Module):
        super().__init__()
        object.__setattr__(self, "module", module)  # not a submodule: state_dict unchanged
        self.key = None
        self.key_inputs = ()
        self.output = None
        self.output_versions = None
        self.hits = 0

    def set_inputs(self, tensors):
        self.key_inputs = tuple(tensors)

    def _current_key(self):
        return tuple((t, t._version) for t in self.key_inputs) + (torch.is_grad_enabled(),)

    def _matches(self, key):
        return (self.key is not None and len(key) == len(self.key)
                and all(a[0] is b[0] and a[1] == b[1] for a, b in zip(key[:-1], self.key[:-1]))
                and key[-1] == self.key[-1] and _versions(self.output) == self.output_versions)

    def nbytes(self) -> int:
        outputs = self.output if isinstance(self.output, (tuple, list)) else (self.output,)
        return sum(t.numel() * t.element_size() for t in outputs if isinstance(t, torch.Tensor))

    def forward(self, *args, **kwargs):
        key = self._current_key()
        if self._matches(key):
            self.hits += 1
            return self.output
        self.output = self.module(*args, **kwargs)
        self.key = key
        self.output_versions = _versions(self.output)
        return self.output

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)
