"""A model with a LoRA (diffusers' PEFT integration) patches and caches as it is run; loading,
switching, fusing or unloading a LoRA while patched drops the cached state."""

import pytest
import torch

import cachekern

pytest.importorskip("peft")
from peft import LoraConfig  # noqa: E402

from tiny_models import flux, sample_family  # noqa: E402

LORA = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                  target_modules=["to_q", "to_k", "to_v", "to_out.0"])


def run(model, inputs, scale):
    return sample_family(model, inputs(1), timestep_scale=scale)


def policy(threshold):
    return cachekern.TeaCache(threshold=threshold, num_inference_steps=6, coefficients=None)


def test_a_lora_model_caches_as_it_runs():
    model, inputs, scale = flux()
    model.add_adapter(LORA, adapter_name="style")
    with_lora = run(model, inputs, scale)
    with cachekern.patched(model, policy(0.0)):
        assert torch.equal(run(model, inputs, scale), with_lora)
    with cachekern.patched(model, policy(10.0)) as handle:
        cached = run(model, inputs, scale)
        assert handle.stats()["skipped"] > 0
    assert torch.isfinite(cached).all() and not torch.equal(cached, with_lora)


@pytest.mark.parametrize("change", ["add_adapter", "set_adapters", "fuse_lora", "unload_lora",
                                    "disable_lora"])
def test_changing_the_lora_while_patched_drops_the_cached_state(change):
    model, inputs, scale = flux()
    model.add_adapter(LORA, adapter_name="style")
    with cachekern.patched(model, policy(10.0)) as handle:
        run(model, inputs, scale)
        assert handle.history
        if change == "add_adapter":
            model.add_adapter(LORA, adapter_name="other")
            model.set_adapters(["style", "other"])
        elif change == "set_adapters":
            model.set_adapters(["style"], weights=[0.5])
        else:
            getattr(model, change)()
        assert handle.history == [] and handle.stats()["calls"] == 0    # reset, as a fresh patch
        after = run(model, inputs, scale)
    with cachekern.patched(model, policy(10.0)):
        assert torch.equal(run(model, inputs, scale), after)
    assert "add_adapter" not in model.__dict__     # unpatch restored the class's methods
