"""Which adapter describes a model: dispatch by class name (through the MRO), so diffusers is
imported only by the caller."""

from cachekern.models.ace_step import AceStepAdapter
from cachekern.models.allegro import AllegroAdapter
from cachekern.models.base import Adapter
from cachekern.models.basic_block import DiTAdapter, PixArtAdapter
from cachekern.models.chroma import ChromaAdapter
from cachekern.models.cogvideox import CogVideoXAdapter
from cachekern.models.cogview4 import CogView4Adapter
from cachekern.models.cosmos3_omni import Cosmos3OmniAdapter
from cachekern.models.flux import BriaAdapter, FluxAdapter, LongCatImageAdapter, OvisImageAdapter
from cachekern.models.flux2 import Flux2Adapter
from cachekern.models.glm_image import GlmImageAdapter
from cachekern.models.hidream import HiDreamAdapter
from cachekern.models.hunyuan_video import (HunyuanImageAdapter, HunyuanVideo15Adapter,
                                             HunyuanVideoAdapter, HunyuanVideoFramepackAdapter)
from cachekern.models.kandinsky5 import Kandinsky5Adapter
from cachekern.models.kandinsky6 import Kandinsky6Adapter
from cachekern.models.latte import LatteAdapter
from cachekern.models.ltx2 import LTX2Adapter
from cachekern.models.lumina2 import Lumina2Adapter
from cachekern.models.minimax_h3 import MiniMaxH3Adapter
from cachekern.models.motif_video import MotifVideoAdapter
from cachekern.models.nucleus_moe import NucleusMoEImageAdapter
from cachekern.models.qwen_image import QwenImageAdapter
from cachekern.models.qwen_image21 import QwenImage21Adapter
from cachekern.models.rms_modulated import LTXVideoAdapter, MochiAdapter
from cachekern.models.sana import SanaAdapter
from cachekern.models.sana_wm_refiner import SanaWMRefinerAdapter
from cachekern.models.sd3 import SD3Adapter
from cachekern.models.unet import UNet2DConditionAdapter
from cachekern.models.wan import (ChronoEditAdapter, HeliosAdapter, SkyReelsV2Adapter,
                                  WanAdapter)
from cachekern.models.wan_animate import WanAnimateAdapter
from cachekern.models.wan_vace import WanVACEAdapter

ADAPTERS = {adapter.model_class: adapter
            for adapter in (FluxAdapter(), SD3Adapter(), WanAdapter(), CogVideoXAdapter(),
                            HunyuanVideoAdapter(), PixArtAdapter(), DiTAdapter(),
                            LTXVideoAdapter(), MochiAdapter(), SanaAdapter(),
                            SkyReelsV2Adapter(), UNet2DConditionAdapter(), CogView4Adapter(),
                            QwenImageAdapter(), HunyuanVideo15Adapter(), Lumina2Adapter(),
                            Flux2Adapter(), ChromaAdapter(), HiDreamAdapter(), LTX2Adapter(),
                            BriaAdapter(), LongCatImageAdapter(), OvisImageAdapter(),
                            ChronoEditAdapter(), HunyuanImageAdapter(), AllegroAdapter(),
                            Kandinsky5Adapter(), GlmImageAdapter(), WanVACEAdapter(),
                            QwenImage21Adapter(), HunyuanVideoFramepackAdapter(),
                            HeliosAdapter(), NucleusMoEImageAdapter(), WanAnimateAdapter(),
                            MiniMaxH3Adapter(), AceStepAdapter(),
                            MotifVideoAdapter(), LatteAdapter(), Kandinsky6Adapter(),
                            SanaWMRefinerAdapter(), Cosmos3OmniAdapter())}


def adapter_for(model) -> Adapter:
    for cls in type(model).__mro__:
        adapter = ADAPTERS.get(cls.__name__)
        if adapter is not None:
            return adapter
    supported = ", ".join(sorted(ADAPTERS))
    raise TypeError(
        f"cachekern has no adapter for {type(model).__name__}. Supported model classes: "
        f"{supported}. To describe a new family, subclass cachekern.models.Adapter (which "
        f"block lists run in order, how a block is called, where block 0's modulated input "
        f"comes from) and add an instance to cachekern.models.ADAPTERS.")

