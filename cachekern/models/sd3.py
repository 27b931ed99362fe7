"""SD3Transformer2DModel (Stable Diffusion 3 and 3.5): its joint blocks, one stack. No published
TeaCache polynomial exists for this family: TeaCache(coefficients="auto") uses the raw distance."""

from cachekern.models.adaln_zero import AdaLNZeroStackAdapter


class SD3Adapter(AdaLNZeroStackAdapter):
    family = "sd3"
    model_class = "SD3Transformer2DModel"
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "joint_attention_kwargs")
    # Per-block ControlNet residuals and skip-layer guidance address single blocks by index.
    uncacheable_args = ("block_controlnet_hidden_states", "skip_layers")
