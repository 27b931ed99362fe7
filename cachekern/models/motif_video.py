"""MotifVideoTransformer3DModel (Motif-Video): double-stream blocks, then single-stream blocks,
called positionally, one stack; the indicator is double block 0's AdaLN-Zero norm1 output, as
for HunyuanVideo. The last ``num_decoder_layers`` single blocks (if any) are decoder layers:
they run on a copy of the stack's input, with the other blocks' output as their context, and
their output is the model's. The stack runs them too, and hands the model its final output;
while a cached call runs, the model's decoder loop meets stand-ins that pass that output
through. No published coefficients."""

from torch import nn

from cachekern.models.adaln_zero import AdaLNZeroStackAdapter
from cachekern.models.base import StackCall


class _PassDecoded(nn.Module):
    """Stands in for a decoder layer during a cached call: the model hands it the stack's
    output as the context, and that is already the decoder layers' output."""

    def forward(self, hidden_states, encoder_hidden_states, *args):
        return encoder_hidden_states, encoder_hidden_states


class MotifVideoAdapter(AdaLNZeroStackAdapter):
    family = "motif_video"
    model_class = "MotifVideoTransformer3DModel"
    lists = ("transformer_blocks", "single_transformer_blocks")
    block_args = ("hidden_states", "encoder_hidden_states", "temb", "attention_mask",
                  "image_rotary_emb", "image_embed_seq_len")
    batched_args = ("encoder_hidden_states", "temb", "attention_mask")
    call_by_keyword = False
    returns = ("hidden_states", "encoder_hidden_states")

    def stand_ins(self, lists, stack, model=None):
        stand_ins = super().stand_ins(lists, stack)
        decoders = getattr(model, "num_decoder_layers", 0) if model is not None else 0
        if decoders:    # the model's decoder loop takes the last of these
            stand_ins["single_transformer_blocks"] = nn.ModuleList(
                _PassDecoded() for _ in range(decoders))
        return stand_ins

    def run_blocks(self, model, call: StackCall, blocks) -> StackCall:
        decoders = model.num_decoder_layers
        main = blocks[:len(blocks) - decoders]
        out = super().run_blocks(model, StackCall(call.hidden, call.extras), main)
        if not decoders:
            return out
        extras = call.extras
        decoded, context = call.hidden, out.hidden
        for block in blocks[len(blocks) - decoders:]:
            decoded, context = block(decoded, context, extras["temb"], None,
                                     extras.get("image_rotary_emb"))
        return StackCall(decoded, dict(out.extras))
