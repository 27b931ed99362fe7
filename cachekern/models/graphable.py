"""What a CUDA graph of a model call needs from the call, for every family: its arguments by name
(a graph replays them from static copies), the signature a captured graph is valid for, and the
call's return value rebuilt around the graph's output tensors."""

import dataclasses
import functools
import inspect

import torch
import torch.utils._pytree as pytree

PLAIN_VALUES = (bool, int, float, str, type(None))   # what a graph can bake in


@functools.lru_cache(maxsize=64)
def _signature(forward):
    return inspect.signature(forward)


def forward_arguments(model, args, kwargs, names):
    """{name: value} of the forward() arguments `names` in `model(*args, **kwargs)`, however
    they were passed (None where absent)."""
    if not names:           # most families: no binding on every call
        return {}
    try:
        bound = _signature(type(model).forward).bind_partial(model, *args, **kwargs).arguments
    except TypeError:
        bound = kwargs
    return {name: bound.get(name) for name in names}


def named_inputs(model, args, kwargs):
    """Every argument of `model(*args, **kwargs)` by parameter name, or None when a graph cannot
    replay the call: a value other than tensors and plain values (None, numbers, strings) in
    tuples, lists and dicts (such as PixArt's added_cond_kwargs, or attention kwargs with a
    LoRA scale, which the graph bakes in and the signature holds), or arguments the forward
    does not bind."""
    try:   # the class's forward (its signature read once), bound with the model as self
        bound = _signature(type(model).forward).bind(model, *args, **kwargs)
    except TypeError:
        return None
    named = {}
    for name, value in list(bound.arguments.items())[1:]:
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                return None
            continue
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    leaves = pytree.tree_leaves(named)
    if not all(isinstance(v, (torch.Tensor,) + PLAIN_VALUES) for v in leaves) or \
            not any(isinstance(v, torch.Tensor) for v in leaves):
        return None
    return named


def on_one_gpu(inputs) -> bool:
    """Whether every tensor argument lives on one CUDA device (a graph cannot replay a copy
    from host memory the caller passes)."""
    devices = {v.device for v in pytree.tree_leaves(inputs) if isinstance(v, torch.Tensor)}
    return len(devices) == 1 and next(iter(devices)).type == "cuda"


def _layout(value):
    return (tuple(value.shape), value.dtype, value.device) if isinstance(value, torch.Tensor) \
        else value


def signature(inputs):
    """What a captured graph is valid for: every tensor argument's shape, dtype and device (not
    its strides: the graph's static copy takes any layout), and every other value."""
    return repr(sorted((name, pytree.tree_map(_layout, value)) for name, value in inputs.items()))


def static_copy(inputs):
    """The arguments a graph is captured on: a copy of every tensor."""
    return pytree.tree_map_only(torch.Tensor, lambda t: t.detach().clone(), inputs)


def copy_into(static, inputs):
    """Writes a call's tensor arguments into the graph's static copies (same signature)."""
    for target, value in zip(pytree.tree_leaves(static), pytree.tree_leaves(inputs)):
        if isinstance(target, torch.Tensor):
            target.copy_(value)


def output_like(output, template):
    """`output` (a graph's outputs, as the forward returns them with return_dict=False: a
    tuple, or for some families the tensor itself) as the eager call of the same kind returned
    them: as they are, or the ModelOutput class `template`, its fields in order."""
    if not dataclasses.is_dataclass(template):
        return output
    names = [field.name for field in dataclasses.fields(template)]
    return template(**dict(zip(names, output)))


def clone_output(result):
    """A model call's return value (a tuple or a ModelOutput of tensors) with every tensor
    cloned: a graph's outputs are overwritten by its next replay."""
    if isinstance(result, torch.Tensor):
        return result.clone()
    if isinstance(result, tuple):
        return tuple(clone_output(v) for v in result)
    if dataclasses.is_dataclass(result):
        return type(result)(**{f.name: clone_output(getattr(result, f.name))
                               for f in dataclasses.fields(result)})
    return result
