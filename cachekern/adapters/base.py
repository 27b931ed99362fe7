"""What every adapter tells the caching layer about a model family."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch


@dataclass
class StackCall:
    """One call of the block stack: the stream whose residual is cached, and everything else the
    blocks take (passed through unchanged on a skipped step)."""

    hidden: torch.Tensor
    extras: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Indicator:
    """What TeaCache watches. Either block 0's timestep-modulated input,
    m = norm(hidden) * (1 + scale) + shift (AdaLN families), or, for families where the timestep
    embedding tracks the output better (Wan, CogVideoX), that embedding itself."""

    scale: Optional[torch.Tensor] = None
    shift: Optional[torch.Tensor] = None
    norm: str = "layer"
    eps: float = 1e-6
    embedding: Optional[torch.Tensor] = None


class Adapter:
    """Base class. A family's adapter names its block lists (run in order as one stack), turns the
    first block's call into a StackCall and back, and computes block 0's indicator."""

    family: str = ""
    model_class: str = ""
    timestep_arg: str = "timestep"
    hidden_arg: str = "hidden_states"
    # forward() arguments under which the stack cannot be fused (e.g. per-block ControlNet
    # residuals): such calls run uncached.
    uncacheable_args: tuple = ()

    def block_lists(self, model) -> List[str]:
        raise NotImplementedError

    def coefficient_key(self, model) -> str:
        """Which published polynomial fits this model (cachekern.coefficients.PUBLISHED)."""
        return self.family

    def stack_call(self, args, kwargs) -> StackCall:
        raise NotImplementedError

    def run_blocks(self, model, call: StackCall, blocks) -> StackCall:
        raise NotImplementedError

    def stack_output(self, call: StackCall):
        """The value the model's block loop expects back from a block."""
        raise NotImplementedError

    def indicator(self, blocks, call: StackCall) -> Indicator:
        """From the model's own blocks (`blocks[0]` is block 0), not the model's attributes,
        which stand swapped for the cached stack while it runs."""
        raise NotImplementedError

    def reference_modulated_input(self, blocks, call: StackCall) -> torch.Tensor:
        """Block 0's modulated input computed by the model's own module, in the model's dtype:
        what the published TeaCache compares (parity mode)."""
        raise NotImplementedError

    def select(self, call: StackCall, index: torch.Tensor) -> StackCall:
        """The samples `index` of a call (for per-sample decisions)."""
        raise NotImplementedError
