"""FluxTransformer2DModel (FLUX.1, and Flux-like models built from the same blocks): 19
double-stream then 38 single-stream blocks, one stack, as TeaCache's FLUX script caches them."""

import torch

from cachekern.models.adaln_zero import AdaLNZeroStackAdapter


class FluxAdapter(AdaLNZeroStackAdapter):
    family = "flux"
    model_class = "FluxTransformer2DModel"
    lists = ("transformer_blocks", "single_transformer_blocks")
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "image_rotary_emb",
                  "joint_attention_kwargs")
    uncacheable_args = ("controlnet_block_samples", "controlnet_single_block_samples")
    # The rotary table depends only on the position ids, which a pipeline passes unchanged.
    memoized_modules = {"pos_embed": ("txt_ids", "img_ids")}

    # TeaCache(cuda_graphs=True) captures the whole forward (cachekern.teacache.graphs).
    graph_capturable = True
    # The text stream's projection and the rotary table feed the blocks only.
    stack_only_modules = ("context_embedder", "pos_embed")

    def graphable_inputs(self, args, kwargs):
        """The call's tensor arguments, or None when the call is not one a captured graph
        replays (positional arguments, LoRA scale or other attention kwargs, ControlNet
        residuals, an argument that is neither a tensor nor a plain value)."""
        if args or kwargs.get("joint_attention_kwargs") is not None or \
                any(kwargs.get(name) is not None for name in self.uncacheable_args):
            return None
        inputs = {}
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                inputs[name] = value
            elif value is not None and not isinstance(value, (bool, int, float, str)):
                return None
        if not isinstance(inputs.get("hidden_states"), torch.Tensor):
            return None
        return inputs

    def graph_matches(self, inputs, prev):
        """Whether the branch's previous modulated input is of this call's stream (same
        samples, tokens and dtype): the graph compares against it."""
        x = inputs["hidden_states"]
        return prev.shape[:2] == x.shape[:2] and prev.dtype == x.dtype and \
            prev.device == x.device

    def model_output(self, output, kwargs):
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=output) if kwargs.get("return_dict", True) \
            else (output,)
