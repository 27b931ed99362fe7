"""The blocks Block Caching caches, and how to read a block call's streams and build its return
value: every transformer block of a DiT (through the family's adapter: which arguments a block
takes, what it returns), and the attention blocks (Transformer2DModel) of a UNet2DConditionModel,
as the Block Caching paper does."""

from dataclasses import dataclass
from typing import Any, List

import torch
from torch import nn

from cachekern.models.base import timestep_of  # noqa: F401  (Block Caching reads it here)
from cachekern.models.context_parallel import local_inputs
from cachekern.models.registry import adapter_for

UNET_STAGES = ("down_blocks", "mid_block", "up_blocks")


class DiTBlockIO:
    """A DiT block's streams: the adapter's `returns` (e.g. Flux: encoder, then image tokens),
    matched by name to the block's arguments; tokens [B, N, C], channels last."""

    channel_dim = -1

    def __init__(self, adapter, list_name=None):
        self.adapter = adapter
        self.block_args = adapter.block_args_of(list_name)
        self.names = tuple(adapter.returns_of(list_name))
        self.primary = self.names.index("hidden_states")

    def inputs(self, args, kwargs) -> List[torch.Tensor]:
        values = dict(zip(self.block_args, args))
        values.update(kwargs)
        return [values[name] for name in self.names]

    def outputs(self, result) -> List[torch.Tensor]:
        return [result] if len(self.names) == 1 else list(result)

    def result(self, tensors, args, kwargs):
        return tensors[0] if len(self.names) == 1 else tuple(tensors)


class UNetAttentionIO:
    """A UNet's Transformer2DModel: hidden_states [B, C, H, W] in, the same shape out (as a tuple
    with return_dict=False, which the UNet's blocks pass, else a Transformer2DModelOutput)."""

    channel_dim = 1
    primary = 0
    names = ("hidden_states",)

    def inputs(self, args, kwargs) -> List[torch.Tensor]:
        return [args[0] if args else kwargs["hidden_states"]]

    def outputs(self, result) -> List[torch.Tensor]:
        return [result[0] if isinstance(result, tuple) else result.sample]

    def result(self, tensors, args, kwargs):
        if not kwargs.get("return_dict", True):
            return (tensors[0],)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput
        return Transformer2DModelOutput(sample=tensors[0])


class UNetResnetIO:
    """A UNet's ResnetBlock2D: input_tensor [B, C, H, W] in, a map out (with other channels where
    the block changes the width: then the output itself is cached, not a residual)."""

    channel_dim = 1
    primary = 0
    names = ("input_tensor",)

    def inputs(self, args, kwargs) -> List[torch.Tensor]:
        return [args[0] if args else kwargs["input_tensor"]]

    def outputs(self, result) -> List[torch.Tensor]:
        return [result]

    def result(self, tensors, args, kwargs):
        return tensors[0]


@dataclass
class Unit:
    name: str
    module: nn.Module
    io: Any


def unit_inputs(unit, args, kwargs) -> List[torch.Tensor]:
    """A unit call's stream inputs as its block will see them: under context parallelism, the
    rank's slice of those the block's own split hook cuts (Wan's plan splits at block 0)."""
    inputs = unit.io.inputs(args, kwargs)
    split = local_inputs(unit.module)
    return inputs if split is None else [split(name, x) for name, x in zip(unit.io.names, inputs)]


def is_unet(model) -> bool:
    return any(cls.__name__ == "UNet2DConditionModel" for cls in type(model).__mro__)


def cached_units(model, resnets=False) -> List[Unit]:
    """The model's cacheable blocks, in the order of named_modules: a DiT's transformer blocks; a
    UNet's attention blocks, and its ResNet blocks too with resnets=True."""
    if is_unet(model):
        kinds = {"attentions": UNetAttentionIO(), "resnets": UNetResnetIO()}
        if not resnets:
            del kinds["resnets"]
        units = []
        for name, module in model.named_modules():
            parent, _, index = name.rpartition(".")
            kind = parent.rpartition(".")[2]
            if name.split(".")[0] in UNET_STAGES and index.isdigit() and kind in kinds:
                units.append(Unit(name, module, kinds[kind]))
        if not units:
            raise ValueError(f"model: this {type(model).__name__} has no attention blocks to "
                             f"cache")
        return units
    if resnets:
        raise ValueError(f"resnets: only a UNet2DConditionModel has ResNet blocks, this is a "
                         f"{type(model).__name__}")
    adapter = adapter_for(model)   # raises, listing the families, if unsupported
    return [Unit(f"{name}.{i}", block, io) for name in adapter.block_lists(model)
            for io in (DiTBlockIO(adapter, name),)
            for i, block in enumerate(model._modules[name])]


_WRAPPER = "_cachekern_call"
_CALL_WRAPPED = {}     # a block class -> its subclass whose calls go through the instance's wrapper


def _call_wrapped_class(cls):
    """A subclass of `cls`, named as it is (diffusers' compile_repeated_blocks finds blocks by
    class name), whose __call__ goes through the wrapper the instance holds."""
    sub = _CALL_WRAPPED.get(cls)
    if sub is None:
        def __call__(self, *args, **kwargs):
            wrapper = self.__dict__.get(_WRAPPER)
            if wrapper is None:
                return cls.__call__(self, *args, **kwargs)
            return wrapper(*args, **kwargs)
        sub = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                          "__qualname__": cls.__qualname__})
        _CALL_WRAPPED[cls] = sub
        _CALL_WRAPPED[sub] = sub
    return sub


def wrap_calls(modules, make_wrapper):
    """Binds make_wrapper(index, module, call) around each module instance's whole call, where
    `call` is the module's own __call__ (its hooks, and its compiled form once the module is
    compiled, e.g. by compile_repeated_blocks before or after patch): what the wrapper decides
    stays outside any compiled region. Returns the function that restores each instance's class
    and wrapper exactly."""
    before = [(module.__class__, module.__dict__.get(_WRAPPER)) for module in modules]
    for index, module in enumerate(modules):
        cls, previous = module.__class__, module.__dict__.get(_WRAPPER)
        if previous is not None:
            inner = previous
        else:
            def inner(*args, _module=module, _cls=cls, **kwargs):
                return _cls.__call__(_module, *args, **kwargs)
        module.__dict__[_WRAPPER] = make_wrapper(index, module, inner)
        module.__class__ = _call_wrapped_class(cls)

    def restore():
        for module, (cls, previous) in zip(modules, before):
            module.__class__ = cls
            module.__dict__.pop(_WRAPPER, None)
            if previous is not None:
                module.__dict__[_WRAPPER] = previous
    return restore
