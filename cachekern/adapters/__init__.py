"""Model adapters: where a model family's blocks are, what they take and return, and where the
indicator TeaCache watches comes from. Dispatch is by class name, so diffusers is imported only
by the caller."""

from cachekern.adapters.base import Adapter, StackCall
from cachekern.adapters.basic_block import DiTAdapter, PixArtAdapter
from cachekern.adapters.cogvideox import CogVideoXAdapter
from cachekern.adapters.flux import FluxAdapter
from cachekern.adapters.hunyuan_video import HunyuanVideoAdapter
from cachekern.adapters.rms_modulated import LTXVideoAdapter, MochiAdapter
from cachekern.adapters.sd3 import SD3Adapter
from cachekern.adapters.wan import WanAdapter

ADAPTERS = {adapter.model_class: adapter
            for adapter in (FluxAdapter(), SD3Adapter(), WanAdapter(), CogVideoXAdapter(),
                            HunyuanVideoAdapter(), PixArtAdapter(), DiTAdapter(),
                            LTXVideoAdapter(), MochiAdapter())}


def adapter_for(model) -> Adapter:
    for cls in type(model).__mro__:
        adapter = ADAPTERS.get(cls.__name__)
        if adapter is not None:
            return adapter
    supported = ", ".join(sorted(ADAPTERS))
    raise TypeError(
        f"cachekern has no adapter for {type(model).__name__}. Supported model classes: "
        f"{supported}. To describe a new family, subclass cachekern.adapters.Adapter (which "
        f"block lists run in order, how a block is called, where block 0's modulated input "
        f"comes from) and add an instance to cachekern.adapters.ADAPTERS.")


__all__ = ["ADAPTERS", "Adapter", "CogVideoXAdapter", "DiTAdapter", "FluxAdapter",
           "HunyuanVideoAdapter", "LTXVideoAdapter", "MochiAdapter", "PixArtAdapter", "SD3Adapter",
           "StackCall", "WanAdapter", "adapter_for"]
