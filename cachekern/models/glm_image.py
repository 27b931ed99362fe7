"""GlmImageTransformer2DModel (GLM-Image's diffusion decoder): CogView4's block call and
AdaLN-Zero layout (image stream first, shift and scale of the image tokens in chunks 0 and 2 of
``norm1.linear(temb)``). Its pipeline passes one KV cache a block. For text to image they stay
idle and the stack runs without them; with condition images they are written in prefill calls
(no denoising step, run uncached by both methods and not counted) and read by the conditional
branch's attention, which only the model's own loop hands each block: TeaCache runs those
calls uncached, Block Caching caches them block by block. No published coefficients."""

from cachekern.models.cogview4 import CogView4Adapter


def _modes(kwargs):
    caches = kwargs.get("kv_caches")
    return set() if caches is None else {cache.mode for cache in caches.caches}


class GlmImageAdapter(CogView4Adapter):
    family = "glm_image"
    model_class = "GlmImageTransformer2DModel"
    graph_uncapturable = ("its rotary table is built on the host and its prior-token dropout "
                          "indexes with a boolean mask, on every call")

    def runs_uncached(self, kwargs):
        # Idle caches (no mode, or "skip": the unconditional branch) change nothing.
        return bool(_modes(kwargs) - {None, "skip"}) or super().runs_uncached(kwargs)

    def prefill_call(self, kwargs):
        return "write" in _modes(kwargs)
