"""The exact memo of modules outside the stack (FLUX's rotary table), on a tiny
FluxTransformer2DModel: reused only while the very same, unmodified id tensors are passed."""

import pytest
import torch

import cachekern
from cachekern import TeaCache


diffusers = pytest.importorskip("diffusers")

from tiny_models import call, make_inputs, tiny_flux  # noqa: E402


def varied_ids(inp, seed):
    g = torch.Generator().manual_seed(seed)
    inp["img_ids"] = torch.randint(0, 9, inp["img_ids"].shape, generator=g).float()
    inp["txt_ids"] = torch.randint(0, 9, inp["txt_ids"].shape, generator=g).float()
    return inp


def counting(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_same_ids_reuse_the_table_and_outputs_stay_bitwise():
    model, inp = tiny_flux(), varied_ids(make_inputs(0), 1)
    ts = torch.linspace(1.0, 0.1, 4)
    with torch.no_grad():
        expected = [call(model, inp, inp["x"], t) for t in ts]
        calls = counting(model.pos_embed)
        handle = cachekern.patch(model, TeaCache(threshold=0.0))
        got = [call(model, inp, inp["x"], t) for t in ts]
    for e, g in zip(expected, got):
        assert torch.equal(e, g)
    assert len(calls) == 1                     # computed once, served three times
    assert handle.stats()["memo_hits"] == 3
    assert handle.stats()["bytes_held"] > 0


def test_new_or_modified_ids_recompute():
    model, inp = tiny_flux(), varied_ids(make_inputs(0), 1)
    t = torch.tensor(0.5)
    with torch.no_grad():
        handle = cachekern.patch(model, TeaCache(threshold=0.0))
        call(model, inp, inp["x"], t)
        inp["img_ids"] = inp["img_ids"].clone()          # a new object, equal values
        call(model, inp, inp["x"], t)
        assert handle.stats()["memo_hits"] == 0
        inp["img_ids"][3, 1] += 5.0                      # in place: the version counter moves
        patched = call(model, inp, inp["x"], t)
        assert handle.stats()["memo_hits"] == 0
        cachekern.unpatch(model)
        plain = call(model, inp, inp["x"], t)
    assert torch.equal(patched, plain)


def test_a_modified_table_is_not_served_again():
    model, inp = tiny_flux(), varied_ids(make_inputs(0), 1)
    with torch.no_grad():
        handle = cachekern.patch(model, TeaCache(threshold=0.0))
        call(model, inp, inp["x"], torch.tensor(0.9))
        table = handle._memos["pos_embed"].output
        table[0].mul_(2.0)                               # someone wrote into the cached table
        patched = call(model, inp, inp["x"], torch.tensor(0.8))
        cachekern.unpatch(model)
        plain = call(model, inp, inp["x"], torch.tensor(0.8))
    assert handle.stats()["memo_hits"] == 0
    assert torch.equal(patched, plain)


def test_positional_ids_run_the_module_as_it_is():
    model, inp = tiny_flux(), varied_ids(make_inputs(0), 1)
    with torch.no_grad():
        handle = cachekern.patch(model, TeaCache(threshold=0.0))
        for t in (0.9, 0.8):
            model(inp["x"], inp["enc"], inp["pooled"], torch.tensor([t, t]), inp["img_ids"],
                  inp["txt_ids"], return_dict=False)
    assert handle.stats()["memo_hits"] == 0
    assert handle.stats()["calls"] == 2
