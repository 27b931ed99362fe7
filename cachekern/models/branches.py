"""Which CFG branch a model call belongs to: the name a diffusers pipeline gives it through the
model's `cache_context`, else the call's position within a step (`calls_per_step` calls a step,
named call0, call1, ...). Shared by everything patched onto a model's forward."""

import contextlib
import itertools


class BranchNames:
    def __init__(self, calls_per_step=1):
        self.calls_per_step = calls_per_step
        self.context = None          # (name, kwargs) of the pipeline's current cache_context
        self._call_counter = itertools.count()

    @contextlib.contextmanager
    def cache_context(self, original, name, **kwargs):
        """Bound (with the model's own cache_context as `original`) as the instance's."""
        self.context = (name, kwargs)
        try:
            with original(name, **kwargs):
                yield
        finally:
            self.context = None

    def branch(self) -> str:
        """The branch of the call now starting (counts it when named by order)."""
        if self.context is not None:
            return self.context[0]
        return f"call{next(self._call_counter) % self.calls_per_step}"

    def restart(self):
        """The next call unnamed by a pipeline is call0 again."""
        self._call_counter = itertools.count()
