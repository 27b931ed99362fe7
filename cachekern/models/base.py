"""What every adapter tells the caching layer about a model family."""

import contextlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import nn


def timestep_of(args, kwargs):
    """The timestep a model call was given (by keyword, `timesteps` for HiDream, or second
    positionally as a UNet takes it), as it was given."""
    for name in ("timestep", "timesteps"):
        if name in kwargs:
            return kwargs[name]
    return args[1] if len(args) > 1 else None


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
    # All chunks of block 0's modulation (AdaLN-Zero: shift, scale, gate of attention, then of
    # the MLP), for families whose norm1 output can be served from the indicator.
    chunks: Optional[tuple] = None
    # Block 0's own modulation projection (AdaLN-Zero: norm1.linear(silu(temb))), computed for
    # the indicator; a computed step serves it to block 0 instead of computing it again.
    projection: Optional[torch.Tensor] = None


class Adapter:
    """Base class. A family's adapter names its block lists (run in order as one stack), says how
    a block is called and what it returns, which call arguments carry a batch dimension, and
    computes the indicator TeaCache watches. Most families only set the class attributes below
    and write `indicator`."""

    family: str = ""
    model_class: str = ""
    timestep_arg: str = "timestep"
    lists: tuple = ()          # the model's block lists, in the order its forward runs them
    block_args: tuple = ()     # a block's parameters in order, hidden_states first
    batched_args: tuple = ("encoder_hidden_states", "temb")  # extras indexed by sample
    call_by_keyword: bool = True   # the model calls its blocks with keywords (else positionally)
    returns: tuple = ("encoder_hidden_states", "hidden_states")  # what a block returns, in order
    # Lists whose blocks take or return other streams than the first list's: {list: tuple}.
    list_block_args: dict = {}
    list_returns: dict = {}
    # forward() arguments under which the stack cannot be fused (e.g. per-block ControlNet
    # residuals): such calls run uncached.
    uncacheable_args: tuple = ()
    # Modules outside the stack whose output is fixed by some forward() arguments: while a call
    # passes the very same tensors, unmodified, their last output is reused (cachekern.teacache.shell_memo;
    # exact). {module attribute: (argument names)}.
    memoized_modules: dict = {}
    # Why the model's whole forward cannot be captured as one CUDA graph (a host read, Python
    # that depends on tensor values), for the cuda_graphs=True error of both methods; "" where
    # it can.
    graph_uncapturable: str = ""
    # Why even the block stack cannot be captured (a host read inside the blocks, a KV cache
    # object they read): "" where it can. A family with graph_uncapturable set and this empty
    # runs its forward eagerly and both methods graph the stack alone
    # (cachekern.models.stack_graphable).
    stack_graph_uncapturable: str = ""
    # Modules outside the stack whose outputs only the blocks read: in a captured call they
    # run inside the compute branch, so a skipped call does not pay for them.
    stack_only_modules: tuple = ()
    # forward() arguments the stack reads besides what the blocks are given (WanVACE's control
    # scales): TeaCache hands them to run_blocks in the call's extras, by name.
    forward_inputs: tuple = ()

    def block_lists(self, model) -> List[str]:
        return list(self.lists)

    def runs_uncached(self, kwargs) -> bool:
        """Whether TeaCache runs this forward call uncached: the fused stack cannot serve it
        (by default, when one of uncacheable_args is passed)."""
        return any(kwargs.get(name) is not None for name in self.uncacheable_args)

    def prefill_call(self, kwargs) -> bool:
        """Whether this forward call is no denoising step (e.g. a KV-cache prefill of condition
        images): both methods run it uncached and do not count it as a step."""
        return False

    def block_args_of(self, list_name) -> tuple:
        return self.list_block_args.get(list_name, self.block_args)

    def returns_of(self, list_name) -> tuple:
        return self.list_returns.get(list_name, self.returns)

    def model_blocks(self, model) -> list:
        """The model's blocks, in the order its forward runs them (block 0 first)."""
        return [block for name in self.block_lists(model) for block in model._modules[name]]

    def stand_ins(self, lists, stack, model=None) -> dict:
        """{attribute: module} the model sees in place of its blocks while a cached call runs:
        the stack, called once where block 0 was, and nothing else to run (and, for a family
        whose stack needs it, a module of `model` standing in for itself, e.g. to record an
        output: see Flux2Adapter)."""
        stand_ins = {name: nn.ModuleList() for name in lists}
        stand_ins[lists[0]].append(stack)
        return stand_ins

    def timestep_of(self, args, kwargs):
        """The timestep the model was called with, as it was given (None when absent)."""
        return kwargs.get(self.timestep_arg)

    def coefficient_key(self, model) -> str:
        """Which published polynomial fits this model (cachekern.teacache.coefficients.PUBLISHED)."""
        return self.family

    def stack_call(self, args, kwargs) -> StackCall:
        """The first block's call, as the model made it."""
        values = dict(zip(self.block_args, args))
        values.update(kwargs)
        return StackCall(values.pop("hidden_states"), values)

    def with_forward_inputs(self, call: StackCall, inputs: dict) -> StackCall:
        """The stack's call given the forward() arguments named in `forward_inputs`: by default
        they join its extras, by name (a family whose cached stream needs them to be laid out,
        Latte's frames, overrides this)."""
        call.extras.update(inputs)
        return call

    def run_blocks(self, model, call: StackCall, blocks) -> StackCall:
        extras = dict(call.extras)
        hidden = call.hidden
        for block in blocks:
            if self.call_by_keyword:
                out = block(hidden_states=hidden, **extras)
            else:
                out = block(hidden, *(extras.get(name) for name in self.block_args[1:]))
            if len(self.returns) == 1:
                hidden = out
            else:
                for name, value in zip(self.returns, out):
                    if name == "hidden_states":
                        hidden = value
                    else:
                        extras[name] = value
        return StackCall(hidden, extras)

    def stack_output(self, call: StackCall):
        """The value the model's block loop expects back from a block."""
        values = [call.hidden if name == "hidden_states" else call.extras[name]
                  for name in self.returns]
        return values[0] if len(values) == 1 else tuple(values)

    def indicator(self, blocks, call: StackCall) -> Indicator:
        """From the model's own blocks (`blocks[0]` is block 0), not the model's attributes,
        which stand swapped for the cached stack while it runs."""
        raise NotImplementedError

    def reference_modulated_input(self, blocks, call: StackCall) -> torch.Tensor:
        """The indicator computed as the published TeaCache computes it, in the model's dtype
        (parity mode)."""
        raise NotImplementedError

    def supports_reuse_modulated(self, blocks) -> bool:
        """Whether block 0's norm1 output can be served from the indicator
        (TeaCache(reuse_modulated=True))."""
        return False

    def serving_projection(self, blocks, indicator: Indicator):
        """A context in which block 0 takes its modulation projection from the indicator's
        (the same computation on the same tensors, so the same bits), or a null context."""
        return contextlib.nullcontext()

    def norm1_output(self, indicator: Indicator, modulated: torch.Tensor):
        """What block 0's norm1 returns, built from the indicator and the modulated input."""
        raise NotImplementedError

    def select(self, call: StackCall, index: torch.Tensor) -> StackCall:
        """The samples `index` of a call (for per-sample decisions)."""
        extras = dict(call.extras)
        for name in self.batched_args:
            value = extras.get(name)
            if isinstance(value, torch.Tensor):
                extras[name] = value[index]
            elif isinstance(value, tuple) and value and \
                    all(isinstance(v, torch.Tensor) for v in value):   # (cos, sin) tables
                extras[name] = tuple(v[index] for v in value)
        return StackCall(call.hidden[index], extras)


class TimestepEmbeddingIndicator:
    """Mixin for families whose indicator is the timestep embedding the blocks receive."""

    embedding_arg = "temb"

    def indicator(self, blocks, call):
        return Indicator(embedding=call.extras[self.embedding_arg])

    def reference_modulated_input(self, blocks, call):
        return call.extras[self.embedding_arg]
