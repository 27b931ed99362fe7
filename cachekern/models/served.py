"""Serving a submodule's output computed elsewhere, for one call: the caching layer computes
some of block 0's work for its own decision and hands the result to block 0 instead of letting
it compute the same thing again."""

import contextlib

import torch


class Served(torch.nn.Module):
    """Stands in for a submodule and returns a value computed elsewhere."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, *args, **kwargs):
        return self.value


@contextlib.contextmanager
def serving(parent, name, value):
    """While inside, parent.<name>(...) returns `value`."""
    original = parent._modules[name]
    parent._modules[name] = Served(value)
    try:
        yield
    finally:
        parent._modules[name] = original
