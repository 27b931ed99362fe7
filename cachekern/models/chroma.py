"""ChromaTransformer2DModel (Chroma, a FLUX.1-schnell derivative): double-stream blocks, then
single-stream blocks, one stack (cachekern.models.joint_stream). Each block takes its own
slices of the modulation table ``distilled_guidance_layer`` computes once per call (recorded
from the call), sliced here as the model slices it. The indicator is double block 0's
modulated image input (its pruned AdaLN-Zero norm: LayerNorm without affine, shift and scale
rows 0 and 1 of the block's table). Calls with ControlNet residuals run uncached. No
published TeaCache polynomial."""

import torch

from cachekern.models.base import Indicator
from cachekern.models.joint_stream import JointStreamAdapter


class ChromaAdapter(JointStreamAdapter):
    family = "chroma"
    model_class = "ChromaTransformer2DModel"
    graph_uncapturable = ("its forward builds the guidance input on the host and copies it to "
                          "the GPU on every call")
    # Its blocks read the modulation table recorded from the call outside the stack.
    stack_graph_uncapturable = ("its blocks read a modulation table recorded outside the stack, "
                                "which a stack graph would read from the first call on")
    recorded = "distilled_guidance_layer"
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "image_rotary_emb",
                  "attention_mask", "joint_attention_kwargs")
    batched_args = ("encoder_hidden_states", "temb", "attention_mask")
    uncacheable_args = ("controlnet_block_samples", "controlnet_single_block_samples")
    list_block_args = {"single_transformer_blocks": (
        "hidden_states", "temb", "image_rotary_emb", "attention_mask", "joint_attention_kwargs")}

    def indicator(self, blocks, call):
        temb = call.extras["temb"]
        return Indicator(temb[:, 1], temb[:, 0], "layer", blocks[0].norm1.norm.eps)

    def reference_modulated_input(self, blocks, call):
        return blocks[0].norm1(call.hidden, emb=call.extras["temb"][:, :6])[0]

    def double_kwargs(self, i, counts, extras, recorded):
        doubles, singles = counts
        image = 3 * singles + 6 * i
        text = 3 * singles + 6 * doubles + 6 * i
        temb = torch.cat((recorded[:, image:image + 6], recorded[:, text:text + 6]), dim=1)
        return dict(temb=temb, image_rotary_emb=extras.get("image_rotary_emb"),
                    attention_mask=extras.get("attention_mask"),
                    joint_attention_kwargs=extras.get("joint_attention_kwargs"))

    def single_kwargs(self, i, counts, extras, recorded):
        return dict(temb=recorded[:, 3 * i:3 * i + 3],
                    image_rotary_emb=extras.get("image_rotary_emb"),
                    attention_mask=extras.get("attention_mask"),
                    joint_attention_kwargs=extras.get("joint_attention_kwargs"))
