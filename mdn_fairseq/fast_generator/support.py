"""Which models the lean beam search decodes exactly as fairseq's ``SequenceGenerator`` would.

The lean search re-implements the forward of fairseq's Transformer encoder and decoder layers on its
own buffers (:mod:`.steps`), so it may only run a model whose forward is fairseq's: no overridden
``forward``/``extract_features``/``output_layer``, no layer variant it does not replicate.  Each check
returns a reason (a short phrase for the log) or None.
"""

from typing import Optional

from fairseq.models.fairseq_decoder import FairseqDecoder
from fairseq.models.fairseq_encoder import FairseqEncoder
from fairseq.models.fairseq_model import BaseFairseqModel
from fairseq.models.transformer import TransformerDecoderBase, TransformerEncoderBase, TransformerModelBase
from fairseq.modules import MultiheadAttention
from fairseq.modules.fairseq_dropout import FairseqDropout
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

from ..modules import MDNDecoderLayer

_LAYER_FORWARDS = (TransformerDecoderLayerBase.forward, MDNDecoderLayer.forward)


def _inherits(obj, name: str, *owners) -> bool:
    """``obj``'s method ``name`` is one of ``owners``' (not overridden in a subclass)."""
    return getattr(type(obj), name, None) in tuple(getattr(owner, name) for owner in owners)


def _dropout_at_inference(module) -> bool:
    return any(isinstance(m, FairseqDropout) and m.apply_during_inference and m.p > 0 for m in module.modules())


def _attention_unsupported_reason(attn, where: str) -> Optional[str]:
    if not isinstance(attn, MultiheadAttention) or not _inherits(attn, "forward", MultiheadAttention):
        return f"{where} ({type(attn).__name__}) has its own forward"
    if attn.bias_k is not None or attn.add_zero_attn:
        return f"{where} uses bias_kv/zero_attn"
    if getattr(attn, "rotary_pos_embed", None) is not None:
        return f"{where} uses rotary embeddings"
    return None


def _decoder_layer_unsupported_reason(layer, i: int) -> Optional[str]:
    if not isinstance(layer, TransformerDecoderLayerBase) or type(layer).forward not in _LAYER_FORWARDS:
        return f"decoder layer {i} ({type(layer).__name__}) has its own forward"
    if not _inherits(layer, "residual_connection", TransformerDecoderLayerBase):
        return f"decoder layer {i} has its own residual connection"
    if layer.encoder_attn is None:
        return f"decoder layer {i} has no encoder attention"
    if any(getattr(layer, a, None) is not None for a in ("attn_ln", "c_attn", "ffn_layernorm", "w_resid")):
        return f"decoder layer {i} uses --scale-attn/--scale-heads/--scale-fc/--scale-resids"
    if (layer.fc1 is None) != (layer.fc2 is None):
        return f"decoder layer {i} has half an FFN"
    for attn, kind in ((layer.self_attn, "self"), (layer.encoder_attn, "encoder")):
        reason = _attention_unsupported_reason(attn, f"decoder layer {i} {kind} attention")
        if reason is not None:
            return reason
    if not layer.self_attn.self_attention or not layer.encoder_attn.encoder_decoder_attention:
        return f"decoder layer {i} attention is not self- then encoder-decoder attention"
    return None


def decoder_unsupported_reason(model) -> Optional[str]:
    """Why the lean search cannot decode ``model`` exactly as fairseq would, or None."""
    decoder = getattr(model, "decoder", None)
    if getattr(model, "encoder", None) is None or not isinstance(decoder, TransformerDecoderBase):
        return f"{type(model).__name__} is not an encoder-decoder with a fairseq Transformer decoder"
    for owner, name, allowed in (
        (model, "get_normalized_probs", (BaseFairseqModel, TransformerModelBase)),
        (model, "get_normalized_probs_scriptable", (BaseFairseqModel,)),
        (decoder, "forward", (TransformerDecoderBase,)),
        (decoder, "extract_features", (TransformerDecoderBase,)),
        (decoder, "extract_features_scriptable", (TransformerDecoderBase,)),
        (decoder, "output_layer", (TransformerDecoderBase,)),
        (decoder, "get_normalized_probs", (FairseqDecoder,)),
        (decoder, "get_normalized_probs_scriptable", (FairseqDecoder,)),
    ):
        if not _inherits(owner, name, *allowed):
            return f"{type(owner).__name__}.{name} is overridden"
    if decoder.adaptive_softmax is not None:
        return "adaptive softmax"
    if decoder.cross_self_attention:
        return "--cross-self-attention"
    if _dropout_at_inference(decoder):
        return "dropout at inference (--retain-dropout)"
    for i, layer in enumerate(decoder.layers):
        reason = _decoder_layer_unsupported_reason(layer, i)
        if reason is not None:
            return reason
    return None


def encoder_unsupported_reason(model) -> Optional[str]:
    """Why the lean (padding-free) encoder pass cannot stand in for ``model.encoder``, or None.

    Only speed is at stake: an unsupported encoder is run by its own ``forward``.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, TransformerEncoderBase):
        return f"{type(encoder).__name__} is not a fairseq Transformer encoder"
    for name, owner in (
        ("forward", TransformerEncoderBase),
        ("forward_scriptable", TransformerEncoderBase),
        ("forward_embedding", TransformerEncoderBase),
        ("forward_torchscript", FairseqEncoder),
    ):
        if not _inherits(encoder, name, owner):
            return f"{type(encoder).__name__}.{name} is overridden"
    if _dropout_at_inference(encoder):
        return "dropout at inference (--retain-dropout)"
    for i, layer in enumerate(encoder.layers):
        if not isinstance(layer, TransformerEncoderLayerBase) or not _inherits(
            layer, "forward", TransformerEncoderLayerBase
        ):
            return f"encoder layer {i} ({type(layer).__name__}) has its own forward"
        if not _inherits(layer, "residual_connection", TransformerEncoderLayerBase) or layer.return_fc:
            return f"encoder layer {i} has its own residual connection or returns its FFN output"
        reason = _attention_unsupported_reason(layer.self_attn, f"encoder layer {i} attention")
        if reason is not None or not layer.self_attn.self_attention:
            return reason or f"encoder layer {i} attention is not self-attention"
    return None


def models_unsupported_reason(models) -> Optional[str]:
    """Why the lean search cannot decode the ensemble ``models``, or None (one supported model)."""
    if len(models) != 1:
        return f"an ensemble of {len(models)} models"
    return decoder_unsupported_reason(models[0])
