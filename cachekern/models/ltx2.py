"""LTX2VideoTransformer3DModel (LTX-2, audio and video): one list of blocks, each taking and
returning two streams, the video tokens and the audio tokens, both of which the model decodes.
TeaCache keeps one residual a call, so the stack packs the two streams into one tensor,
[B, 1, Nv·Dv + Na·Da] (a copy a call): its residual, reuse and forecasts then cover both, and
stack_output unpacks them for the model's output layers. Block Caching wraps each block and
keeps both streams' residuals as they are.

The indicator is block 0's modulated video input (RMSNorm, shift and scale from its table
plus the timestep embedding), computed the model's way on the unpacked video stream. Calls
with spatio-temporal guidance (per-block perturbation) run uncached. No published polynomial."""

from cachekern.models.base import Adapter, Indicator, StackCall
from cachekern.models.packed_streams import pack as _pack, unpack as _unpack

_STREAMS = "_cachekern_streams"     # the two streams' per-sample shapes, to unpack


class LTX2Adapter(Adapter):
    family = "ltx2"
    model_class = "LTX2VideoTransformer3DModel"
    graph_uncapturable = ("its rotary coordinates copy the patch sizes from the host to the GPU "
                          "on every call")
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "audio_hidden_states", "encoder_hidden_states",
                  "audio_encoder_hidden_states", "temb", "temb_audio", "temb_ca_scale_shift",
                  "temb_ca_audio_scale_shift", "temb_ca_gate", "temb_ca_audio_gate",
                  "temb_prompt", "temb_prompt_audio", "video_rotary_emb", "audio_rotary_emb",
                  "ca_video_rotary_emb", "ca_audio_rotary_emb", "encoder_attention_mask",
                  "audio_encoder_attention_mask", "self_attention_mask",
                  "audio_self_attention_mask", "a2v_cross_attention_mask",
                  "v2a_cross_attention_mask", "use_a2v_cross_attention",
                  "use_v2a_cross_attention", "perturbation_mask", "all_perturbed")
    batched_args = ("encoder_hidden_states", "audio_encoder_hidden_states", "temb", "temb_audio",
                    "temb_ca_scale_shift", "temb_ca_audio_scale_shift", "temb_ca_gate",
                    "temb_ca_audio_gate", "temb_prompt", "temb_prompt_audio",
                    "video_rotary_emb", "audio_rotary_emb", "ca_video_rotary_emb",
                    "ca_audio_rotary_emb", "encoder_attention_mask",
                    "audio_encoder_attention_mask", "self_attention_mask")
    returns = ("hidden_states", "audio_hidden_states")
    # Spatio-temporal guidance perturbs only some blocks: their arguments differ from block 0's.
    uncacheable_args = ("spatio_temporal_guidance_blocks", "perturbation_mask")

    def stack_call(self, args, kwargs):
        call = super().stack_call(args, kwargs)
        audio = call.extras.pop("audio_hidden_states")
        call.extras[_STREAMS] = (tuple(call.hidden.shape[1:]), tuple(audio.shape[1:]))
        return StackCall(_pack(call.hidden, audio), call.extras)

    def run_blocks(self, model, call, blocks):
        kwargs = {k: v for k, v in call.extras.items() if k != _STREAMS}
        video, audio = _unpack(call.hidden, call.extras[_STREAMS])
        for block in blocks:
            video, audio = block(hidden_states=video, audio_hidden_states=audio, **kwargs)
        return StackCall(_pack(video, audio), dict(call.extras))

    def stack_output(self, call):
        return _unpack(call.hidden, call.extras[_STREAMS])

    def indicator(self, blocks, call):
        return Indicator(embedding=self.reference_modulated_input(blocks, call))

    def reference_modulated_input(self, blocks, call):
        block = blocks[0]
        video, _ = _unpack(call.hidden, call.extras[_STREAMS])
        temb = call.extras["temb"]
        table = block.scale_shift_table
        ada = table[None, None].to(temb.device) + temb.reshape(
            video.shape[0], temb.shape[1], table.shape[0], -1)
        shift, scale = ada[:, :, 0], ada[:, :, 1]
        return block.norm1(video) * (1 + scale) + shift
