"""Kandinsky6Transformer3DModel (Kandinsky 6, video and audio): text blocks per modality run
first, on the text alone; the stack is the fused blocks, each taking the video tokens and the
audio tokens (None for video alone), both modalities' text and time embeddings, the rotary
tables and the text mask, called positionally, and returning both streams.

Without audio the cached stream is the video tokens; with audio the stack packs the two streams
into one tensor per sample (cachekern.models.packed_streams), so a skipped step serves both, as
for LTX-2. The indicator is fused block 0's modulated video self-attention input (LayerNorm
without affine, shift and scale from the video modulation of the video time embedding), fused
for video alone and computed the model's way (fp32) on the unpacked video when packed. Block
Caching caches both streams of every fused block. No published coefficients."""

import torch

from cachekern.models.base import Adapter, Indicator, StackCall
from cachekern.models.packed_streams import pack, unpack

_STREAMS = "_cachekern_streams"     # the packed streams' per-sample shapes (None: video alone)


class Kandinsky6Adapter(Adapter):
    family = "kandinsky6"
    model_class = "Kandinsky6Transformer3DModel"
    lists = ("visual_transformer_blocks",)
    block_args = ("hidden_states", "audio", "video_text", "audio_text", "time_embed",
                  "video_rope", "audio_rope", "attn_mask")
    returns = ("hidden_states", "audio")
    call_by_keyword = False
    batched_args = ("video_text", "audio_text", "attn_mask")

    def stack_call(self, args, kwargs):
        call = super().stack_call(args, kwargs)
        audio = call.extras.pop("audio", None)
        if audio is None:
            call.extras[_STREAMS] = None
            return call
        call.extras[_STREAMS] = (tuple(call.hidden.shape[1:]), tuple(audio.shape[1:]))
        return StackCall(pack(call.hidden, audio), call.extras)

    def _streams(self, call):
        shapes = call.extras[_STREAMS]
        return (call.hidden, None) if shapes is None else unpack(call.hidden, shapes)

    def run_blocks(self, model, call, blocks):
        video, audio = self._streams(call)
        args = [call.extras.get(name) for name in self.block_args[2:]]
        for block in blocks:
            video, audio = block(video, audio, *args)
        hidden = video if audio is None else pack(video, audio)
        return StackCall(hidden, dict(call.extras))

    def stack_output(self, call):
        return self._streams(call)

    def select(self, call, index):
        sub = super().select(call, index)
        times = call.extras.get("time_embed")
        if isinstance(times, tuple):        # (video, audio) time embeddings, batch first
            sub.extras["time_embed"] = tuple(t[index] for t in times)
        return sub

    @staticmethod
    def _shift_scale(block, call):
        # The fused block's own split: 9 chunks of the video modulation (self-attention,
        # cross-attention, feed-forward; shift, scale, gate each), the first two.
        params = block.video_dec_block.visual_modulation(call.extras["time_embed"][0])
        shift, scale, _ = torch.chunk(torch.chunk(params, 3, dim=-1)[0], 3, dim=-1)
        return shift, scale

    def indicator(self, blocks, call):
        if call.extras[_STREAMS] is not None:
            return Indicator(embedding=self.reference_modulated_input(blocks, call))
        shift, scale = self._shift_scale(blocks[0], call)
        return Indicator(scale, shift, "layer", blocks[0].video_dec_block.self_attention_norm.eps)

    def reference_modulated_input(self, blocks, call):
        shift, scale = self._shift_scale(blocks[0], call)
        video, _ = self._streams(call)
        norm = blocks[0].video_dec_block.self_attention_norm
        return (norm(video.float()) * (scale[:, None].float() + 1.0)
                + shift[:, None].float()).to(video.dtype)
