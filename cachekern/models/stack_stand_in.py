"""The block stack standing in for a model's block lists during one forward call (both methods'
way of running the stack as one unit inside the model's own forward: TeaCache always, Block
Caching where it graphs the stack alone): the model's loop calls it once, where block 0 was."""

import contextlib

from torch import nn


class StackStandIn(nn.Module):
    """`run(args, kwargs)` receives block 0's call and returns what the model's loop expects
    back; `blocks()` are the model's blocks of the call in progress."""

    def __init__(self, run, blocks):
        super().__init__()
        # Not submodules: no recursion in .modules(), no parameters counted twice.
        object.__setattr__(self, "_run", run)
        object.__setattr__(self, "_blocks", blocks)

    def forward(self, *args, **kwargs):
        return self._run(args, kwargs)

    def __getattr__(self, name):
        # Some models reach into block 0 outside their block loop (DiT reads
        # transformer_blocks[0].norm1.emb for its final modulation): answer as block 0.
        try:
            return super().__getattr__(name)
        except AttributeError:
            blocks = self._blocks()
            if not blocks:          # outside a call (e.g. torch.compile probing attributes)
                raise
            return getattr(blocks[0], name)


@contextlib.contextmanager
def modules_replaced(model, replacements: dict):
    """`model`'s child modules named in `replacements` swapped for them while the block runs."""
    saved = {name: model._modules[name] for name in replacements}
    model._modules.update(replacements)
    try:
        yield
    finally:
        model._modules.update(saved)
