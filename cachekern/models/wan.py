"""WanTransformer3DModel (Wan2.1 / Wan2.2): its blocks as one stack, the residual of the token
stream. The indicator is the timestep projection the blocks receive (TeaCache's "e0", the
``use_ret_steps`` mode of the published Wan script), compared directly, without a norm.

The published setting for this indicator computes the first 5 steps and not the last:
``TeaCache(warmup_steps=5, compute_last_step=False, ...)``. "auto" coefficients exist for the T2V
1.3B (hidden 1536) and 14B (hidden 5120) models; others get the raw distance.
"""

from cachekern.models.base import Adapter, TimestepEmbeddingIndicator


class WanAdapter(TimestepEmbeddingIndicator, Adapter):
    family = "wan"
    model_class = "WanTransformer3DModel"
    lists = ("blocks",)
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "rotary_emb")
    call_by_keyword = False
    returns = ("hidden_states",)

    def coefficient_key(self, model):
        # The published e0 fits are Wan2.1 T2V's; a family built on Wan's blocks has none.
        if self.family != WanAdapter.family:
            return self.family
        hidden = model.config.num_attention_heads * model.config.attention_head_dim
        return {1536: "wan_t2v_1.3b_e0", 5120: "wan_t2v_14b_e0"}.get(hidden, "wan")


class SkyReelsV2Adapter(WanAdapter):
    """SkyReelsV2Transformer3DModel: Wan's blocks, called with a causal mask as a fifth
    argument (diffusion forcing); its timestep projection can carry one embedding per frame,
    which the indicator compares as it is. No published coefficients."""
    family = "skyreels_v2"
    model_class = "SkyReelsV2Transformer3DModel"
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "rotary_emb",
                  "attention_mask")


class ChronoEditAdapter(WanAdapter):
    """ChronoEditTransformer3DModel (ChronoEdit, image editing as video): Wan's blocks and call
    (its rotary table differs, outside the blocks). No published coefficients."""
    family = "chronoedit"
    model_class = "ChronoEditTransformer3DModel"
    graph_uncapturable = ("its rotary table for an edit's two frames indexes with a host list, "
                          "copied to the GPU on every call")


class HeliosAdapter(WanAdapter):
    """HeliosTransformer3DModel (Helios, long video): Wan's blocks, each also told how many of
    the stream's tokens are the new frames' (the short, mid and long history latents come
    first, at timestep 0 when ``zero_history_timestep``). The indicator is the per-token
    timestep projection the blocks receive, history rows included. No published
    coefficients."""
    family = "helios"
    model_class = "HeliosTransformer3DModel"
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "rotary_emb",
                  "original_context_length")
    # Its rotary table is per sample (the history's positions), batch first.
    batched_args = ("encoder_hidden_states", "temb", "rotary_emb")
