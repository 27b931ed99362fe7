"""FluxTransformer2DModel (FLUX.1, and Flux-like models built from the same blocks): 19
double-stream then 38 single-stream blocks, one stack, as TeaCache's FLUX script caches them."""

import torch

from cachekern.adapters.adaln_zero import AdaLNZeroStackAdapter
from cachekern.adapters.base import StackCall


class FluxAdapter(AdaLNZeroStackAdapter):
    family = "flux"
    model_class = "FluxTransformer2DModel"
    lists = ("transformer_blocks", "single_transformer_blocks")
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "image_rotary_emb",
                  "joint_attention_kwargs")
    uncacheable_args = ("controlnet_block_samples", "controlnet_single_block_samples")
    # The rotary table depends only on the position ids, which a pipeline passes unchanged.
    memoized_modules = {"pos_embed": ("txt_ids", "img_ids")}

    # TeaCache(cuda_graphs=True): what a skipped call needs outside the stack, as
    # FluxTransformer2DModel.forward computes it (cachekern.graphed_skip).
    graph_inputs = ("hidden_states", "timestep", "pooled_projections", "guidance")

    def graphable_inputs(self, args, kwargs):
        """The call's graph inputs, or None when the call is not one the graphs reproduce
        (positional arguments, LoRA scale or other attention kwargs, ControlNet residuals)."""
        if args or kwargs.get("joint_attention_kwargs") is not None or \
                any(kwargs.get(name) is not None for name in self.uncacheable_args):
            return None
        inputs = {name: kwargs.get(name) for name in self.graph_inputs}
        if inputs["guidance"] is None:
            del inputs["guidance"]
        if not all(isinstance(t, torch.Tensor) for t in inputs.values()):
            return None
        return inputs

    def graph_matches(self, inputs, prev):
        """Whether the branch's previous modulated input is of this call's stream (same
        samples, tokens and dtype): the graphs compare against it."""
        x = inputs["hidden_states"]
        return prev.shape[:2] == x.shape[:2] and prev.dtype == x.dtype and \
            prev.device == x.device

    def pre_stack(self, model, inputs):
        hidden = model.x_embedder(inputs["hidden_states"])
        timestep = inputs["timestep"].to(hidden.dtype) * 1000
        pooled = inputs["pooled_projections"]
        if "guidance" in inputs:
            guidance = inputs["guidance"].to(hidden.dtype) * 1000
            temb = model.time_text_embed(timestep, guidance, pooled)
        else:
            temb = model.time_text_embed(timestep, pooled)
        return StackCall(hidden, {"temb": temb})

    def tail(self, model, hidden, call):
        return model.proj_out(model.norm_out(hidden, call.extras["temb"]))

    def model_output(self, output, kwargs):
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=output) if kwargs.get("return_dict", True) \
            else (output,)
