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


def sum_across_ranks(vector: torch.Tensor, group) -> torch.Tensor:
    """The sum over the group's ranks of a small tensor, the same bits on every rank: gathered,
    then added in rank order (an all-reduce may add in an order that differs between ranks). A
    NaN on any rank is a NaN on every rank."""
    vector = vector.contiguous()
    gathered = [torch.empty_like(vector)
                for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(gathered, vector, group=group)
    total = gathered[0].clone()
    for part in gathered[1:]:
        total += part
    return total


def process_group(model):
    """The process group of the model's context parallelism, or None where it has none."""
    parallel = getattr(model, "_parallel_config", None)
    config = getattr(parallel, "context_parallel_config", None)
    return None if config is None else config._flattened_mesh.get_group()


def is_context_parallel(model) -> bool:
    return process_group(model) is not None


def local_inputs(module):
    """split(name, tensor): the rank's slice of the module's argument `name` as the module's
    own split hook will cut it (the tensor itself for an argument the plan does not split), or
    None where the plan splits nothing at this module's input."""
    registry = getattr(module, "_diffusers_hook", None)
    hooks = [hook for hook in (registry.hooks.values() if registry is not None else ())
             if type(hook).__name__ == SPLIT_HOOK]
    if not hooks:
        return None

    def split(name, tensor):
        for hook in hooks:
            plan = hook.metadata.get(name)
            if isinstance(tensor, torch.Tensor) and plan is not None and \
                    not isinstance(plan, (list, tuple)) and not plan.split_output:
                tensor = hook._prepare_cp_input(tensor, plan)
        return tensor
    return split


class StackShard:
    """The rank's view of a stack under context parallelism."""

    def __init__(self, group, split=None):
        self.group = group
        self._split = split        # block 0's own split of its arguments, or None

    def local(self, hidden: torch.Tensor) -> torch.Tensor:
        """The rank's slice of the stack's input, cut as block 0's split hook cuts it (the
        input itself where the plan split the tokens before the stack)."""
        return hidden if self._split is None else self._split("hidden_states", hidden)

    def sum_across_ranks(self, vector: torch.Tensor) -> torch.Tensor:
        return sum_across_ranks(vector, self.group)


def stack_shard(model, block0) -> Optional[StackShard]:
    """The StackShard of a model whose context parallelism is enabled, else None."""
    group = process_group(model)
    return None if group is None else StackShard(group, local_inputs(block0))
