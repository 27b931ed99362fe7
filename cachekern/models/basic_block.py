"""Families built from diffusers' BasicTransformerBlock with adaptive norms: PixArt
(norm_type "ada_norm_single": shift/scale from a learned table plus the embedded timestep) and DiT
("ada_norm_zero": an AdaLayerNormZero with its own timestep + class embedding). The indicator is
block 0's modulated norm1 output; the stack is the model's transformer_blocks."""

from cachekern.models.base import Adapter, Indicator


def ada_norm_single_shift_scale(block, call, embedding_arg="timestep"):
    """Block's norm1 shift and scale [B, C] under "ada_norm_single" (PixArt, Sana, Allegro): its
    learned table plus the embedded timestep the blocks receive (as `embedding_arg`), six chunks
    of which these are the first two."""
    batch = call.hidden.shape[0]
    table = block.scale_shift_table[None] + call.extras[embedding_arg].reshape(batch, 6, -1)
    shift, scale = table.chunk(6, dim=1)[:2]
    return shift.squeeze(1), scale.squeeze(1)


def plain_layer_norm(norm, model_class):
    """`norm`, checked to have no elementwise affine: the fused indicator does not apply one."""
    if getattr(norm, "weight", None) is not None:
        raise TypeError(f"cachekern: {model_class}'s block 0 norm1 has an elementwise affine "
                        f"(norm_elementwise_affine=True), which the fused indicator does not "
                        f"apply")
    return norm


class AdaNormSingleIndicator:
    """Adapter mixin for blocks modulated as PixArt's "ada_norm_single" with a plain LayerNorm
    norm1, the embedded timestep reaching them as `embedding_arg` (Sana, Allegro): the indicator
    is block 0's modulated norm1 output."""

    embedding_arg = "timestep"

    def indicator(self, blocks, call):
        norm = plain_layer_norm(blocks[0].norm1, self.model_class)
        shift, scale = ada_norm_single_shift_scale(blocks[0], call, self.embedding_arg)
        return Indicator(scale, shift, "layer", norm.eps)

    def reference_modulated_input(self, blocks, call):
        shift, scale = ada_norm_single_shift_scale(blocks[0], call, self.embedding_arg)
        return blocks[0].norm1(call.hidden) * (1 + scale[:, None]) + shift[:, None]


class BasicBlockAdapter(Adapter):
    lists = ("transformer_blocks",)
    block_args = ("hidden_states", "attention_mask", "encoder_hidden_states",
                  "encoder_attention_mask", "timestep", "cross_attention_kwargs", "class_labels")
    batched_args = ("attention_mask", "encoder_hidden_states", "encoder_attention_mask",
                    "timestep", "class_labels")
    returns = ("hidden_states",)

    def _shift_scale(self, block, call):
        if block.norm_type == "ada_norm_single":
            return ada_norm_single_shift_scale(block, call)
        if block.norm_type == "ada_norm_zero":
            norm1 = block.norm1
            emb = norm1.emb(call.extras["timestep"], call.extras.get("class_labels"),
                            hidden_dtype=call.hidden.dtype)
            shift, scale = norm1.linear(norm1.silu(emb)).chunk(6, dim=1)[:2]
            return shift, scale
        raise TypeError(f"cachekern: BasicTransformerBlock with norm_type {block.norm_type!r} "
                        f"has no adapter (supported: 'ada_norm_single', 'ada_norm_zero')")

    def _layer_norm(self, block):
        norm = block.norm1.norm if block.norm_type == "ada_norm_zero" else block.norm1
        return plain_layer_norm(norm, self.model_class)

    def indicator(self, blocks, call):
        shift, scale = self._shift_scale(blocks[0], call)
        return Indicator(scale, shift, "layer", self._layer_norm(blocks[0]).eps)

    def reference_modulated_input(self, blocks, call):
        block = blocks[0]
        if block.norm_type == "ada_norm_zero":
            return block.norm1(call.hidden, call.extras["timestep"], call.extras.get("class_labels"),
                               hidden_dtype=call.hidden.dtype)[0]
        shift, scale = self._shift_scale(block, call)
        return block.norm1(call.hidden) * (1 + scale[:, None]) + shift[:, None]


class PixArtAdapter(BasicBlockAdapter):
    family = "pixart"
    model_class = "PixArtTransformer2DModel"


class DiTAdapter(BasicBlockAdapter):
    family = "dit"
    model_class = "DiTTransformer2DModel"
