"""Diffusers' context parallelism (``model.enable_parallelism(config=ContextParallelConfig(...))``)
as a cache sees it. Each rank holds a slice of the tokens: the model's plan splits the token
stream either before the stack (FLUX splits the model's inputs) or at block 0's input (Wan's
plan puts the split on ``blocks.0``), and gathers it after the stack.

A cache keeps each rank's residuals for its own slice. What decides must be the same on every
rank, or the ranks diverge (or wait forever in the next collective): the per-sample sums a
decision reads are summed over the ranks, gathered and added in rank order, so that every rank
adds the same numbers in the same order and gets the same bits.
"""

from typing import Optional

import torch

SPLIT_HOOK = "ContextParallelSplitHook"   # diffusers.hooks.context_parallel, found by name


class StackShard:
    """The rank's view of a stack under context parallelism."""

    def __init__(self, group, split=None):
        self.group = group
        self._split = split        # block 0's own split of hidden_states, or None

    @property
    def world_size(self) -> int:
        return torch.distributed.get_world_size(self.group)

    def local(self, hidden: torch.Tensor) -> torch.Tensor:
        """The rank's slice of the stack's input, cut as block 0's split hook cuts it (the
        input itself where the plan split the tokens before the stack)."""
        return hidden if self._split is None else self._split(hidden)

    def sum_across_ranks(self, vector: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a small vector, the same bits on every rank: gathered, then
        added in rank order (an all-reduce may add in an order that differs between ranks).
        A NaN on any rank is a NaN on every rank."""
        vector = vector.contiguous()
        gathered = [torch.empty_like(vector) for _ in range(self.world_size)]
        torch.distributed.all_gather(gathered, vector, group=self.group)
        total = gathered[0].clone()
        for part in gathered[1:]:
            total += part
        return total


def _config(model):
    parallel = getattr(model, "_parallel_config", None)
    return getattr(parallel, "context_parallel_config", None)


def is_context_parallel(model) -> bool:
    return _config(model) is not None


def stack_shard(model, block0) -> Optional[StackShard]:
    """The StackShard of a model whose context parallelism is enabled, else None."""
    config = _config(model)
    if config is None:
        return None
    split = None
    registry = getattr(block0, "_diffusers_hook", None)
    for hook in (registry.hooks.values() if registry is not None else ()):
        if type(hook).__name__ != SPLIT_HOOK:
            continue
        plan = hook.metadata.get("hidden_states")
        if plan is not None and not getattr(plan, "split_output", False):
            def split(hidden, _hook=hook, _plan=plan):
                return _hook._prepare_cp_input(hidden, _plan)
    return StackShard(config._flattened_mesh.get_group(), split)
