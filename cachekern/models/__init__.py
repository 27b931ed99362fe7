"""Model families, for both methods: one adapter per family says where its blocks are, how a
block is called and what it returns, and where the indicator TeaCache watches comes from;
`blocks` reads a block call's streams for Block Caching; `binding` puts a handle on a model
instance's forward. Imports nothing else of cachekern."""

from cachekern.models.base import Adapter, StackCall
from cachekern.models.basic_block import DiTAdapter, PixArtAdapter
from cachekern.models.chroma import ChromaAdapter
from cachekern.models.cogvideox import CogVideoXAdapter
from cachekern.models.cogview4 import CogView4Adapter
from cachekern.models.flux import BriaAdapter, FluxAdapter, LongCatImageAdapter, OvisImageAdapter
from cachekern.models.flux2 import Flux2Adapter
from cachekern.models.hidream import HiDreamAdapter
from cachekern.models.hunyuan_video import (HunyuanImageAdapter, HunyuanVideo15Adapter,
                                             HunyuanVideoAdapter)
from cachekern.models.ltx2 import LTX2Adapter
from cachekern.models.lumina2 import Lumina2Adapter
from cachekern.models.qwen_image import QwenImageAdapter
from cachekern.models.registry import ADAPTERS, adapter_for
from cachekern.models.rms_modulated import LTXVideoAdapter, MochiAdapter
from cachekern.models.sana import SanaAdapter
from cachekern.models.sd3 import SD3Adapter
from cachekern.models.unet import UNet2DConditionAdapter
from cachekern.models.wan import ChronoEditAdapter, SkyReelsV2Adapter, WanAdapter

__all__ = ["ADAPTERS", "Adapter", "BriaAdapter", "ChromaAdapter", "ChronoEditAdapter",
           "CogVideoXAdapter", "CogView4Adapter", "DiTAdapter", "Flux2Adapter", "FluxAdapter",
           "HiDreamAdapter", "HunyuanImageAdapter", "HunyuanVideo15Adapter",
           "HunyuanVideoAdapter", "LTX2Adapter", "LTXVideoAdapter", "LongCatImageAdapter",
           "Lumina2Adapter", "MochiAdapter", "OvisImageAdapter", "PixArtAdapter",
           "QwenImageAdapter", "SanaAdapter", "SD3Adapter", "SkyReelsV2Adapter", "StackCall",
           "UNet2DConditionAdapter", "WanAdapter", "adapter_for"]
