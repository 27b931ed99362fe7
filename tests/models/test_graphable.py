"""cachekern.models.graphable on the CPU: a call's arguments bound to the forward's parameter
names (positional ones too), what a graph cannot replay refused, signatures that ignore strides
but not shapes or values, the static copies written in place, and outputs rebuilt as the model
returns them."""

import pytest
import torch

from cachekern.models.graphable import (clone_output, copy_into, named_inputs, on_one_gpu,
                                        output_like, signature, static_copy)

diffusers = pytest.importorskip("diffusers")

from tiny_models import pixart, unet  # noqa: E402


def test_positional_and_keyword_arguments_are_bound_by_name():
    model, inputs, _ = unet()
    inp = inputs(1)
    t = torch.full((2,), 3.0)
    by_position = named_inputs(model, (inp["sample"], t), {
        k: v for k, v in inp.items() if k != "sample"})
    by_keyword = named_inputs(model, (), dict(inp, timestep=t))
    assert by_position is not None and set(by_position) == set(by_keyword)
    assert by_position["timestep"] is t and by_position["sample"] is inp["sample"]
    assert signature(by_position) == signature(by_keyword)


def test_dicts_of_tensors_and_plain_values_replay_other_objects_do_not():
    model, inputs, _ = pixart()
    inp = dict(inputs(1), timestep=torch.ones(2))
    assert isinstance(inp.get("added_cond_kwargs"), dict)
    named = named_inputs(model, (), inp)
    assert named is not None and named["added_cond_kwargs"] == inp["added_cond_kwargs"]
    assert named_inputs(model, (), dict(inp, added_cond_kwargs={"x": object()})) is None
    assert named_inputs(model, (), dict(inp, not_a_parameter=1)) is None       # unbound
    assert named_inputs(model, (), {"return_dict": False}) is None     # no tensor at all


def test_signatures_ignore_strides_but_not_shapes_dtypes_or_values():
    x = torch.randn(3, 5, 7)
    base = signature(dict(x=x, flag=True, sizes=[(2, 3)]))
    assert signature(dict(x=x.transpose(0, 1).contiguous().transpose(0, 1), flag=True,
                          sizes=[(2, 3)])) == base
    for other in (dict(x=x[:2], flag=True, sizes=[(2, 3)]),
                  dict(x=x.double(), flag=True, sizes=[(2, 3)]),
                  dict(x=x, flag=False, sizes=[(2, 3)]),
                  dict(x=x, flag=True, sizes=[(2, 4)])):
        assert signature(other) != base


def test_static_copies_take_new_values_of_any_layout_in_place():
    inputs = dict(x=torch.randn(4, 6), kw={"t": torch.randn(4)}, n=3)
    static = static_copy(inputs)
    kept = static["x"], static["kw"]["t"]
    new = dict(x=torch.randn(6, 4).t(), kw={"t": torch.randn(4)}, n=3)
    copy_into(static, new)
    assert static["x"] is kept[0] and static["kw"]["t"] is kept[1]
    assert torch.equal(static["x"], new["x"]) and torch.equal(static["kw"]["t"], new["kw"]["t"])
    assert not on_one_gpu(inputs)


def test_outputs_are_rebuilt_as_the_model_returns_them_and_cloned():
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    out = torch.randn(2, 3)
    assert output_like((out,), tuple)[0] is out
    rebuilt = output_like((out,), Transformer2DModelOutput)
    assert isinstance(rebuilt, Transformer2DModelOutput) and rebuilt.sample is out
    # Several outputs (Cosmos 3 Omni: lists per item, and None for absent modalities).
    from diffusers.models.transformers.transformer_cosmos3 import Cosmos3OmniTransformerOutput
    several = output_like(([out], None, None), Cosmos3OmniTransformerOutput)
    assert several.sample[0] is out and several.sound is None and several.action is None
    assert output_like(([out], None, None), tuple) == ([out], None, None)
    assert output_like(out, torch.Tensor) is out      # Kandinsky 5 returns the tensor itself
    cloned = clone_output(rebuilt)
    assert cloned.sample is not out and torch.equal(cloned.sample, out)
    pair = clone_output((out, None))
    assert pair[0] is not out and torch.equal(pair[0], out) and pair[1] is None
