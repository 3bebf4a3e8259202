"""Which models the lean beam search decodes exactly as fairseq's ``SequenceGenerator`` would, and how.

Two routes (each check returns a reason, a short phrase for the log, or None):

* **packed** (:func:`packed_unsupported_reason`): the lean search re-implements the forward of the
  decoder layers on its own buffers (:mod:`.steps`, :mod:`.compressed`), so it may only run a model whose
  forward is one it replicates: fairseq's Transformer (and MDN) layers, and the peers' layers -- AAN's
  average block, SAN's shared attention, CAN's compressed sub-layer -- with no overridden
  ``forward``/``extract_features``/``output_layer`` and no option it does not replicate;
* **incremental** (:func:`incremental_unsupported_reason`): the model's own encoder and incremental
  decoder, called as fairseq's generator calls them (:mod:`.incremental`), for the peers' decoders
  (AAN, SAN, CAN) whose layers the packed route does not replicate (a subclass with its own forward);
  the search around it stays lean.

In half precision and under ``torch.autocast`` every model either route takes runs its own forward
(:class:`.incremental.IncrementalSteps`, see :mod:`.search`).
"""

from typing import Optional

from fairseq.models.fairseq_decoder import FairseqDecoder
from fairseq.models.fairseq_encoder import FairseqEncoder
from fairseq.models.fairseq_model import BaseFairseqModel
from fairseq.models.transformer import TransformerDecoderBase, TransformerEncoderBase, TransformerModelBase
from fairseq.modules import MultiheadAttention
from fairseq.modules.fairseq_dropout import FairseqDropout
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

from ..models.aan import AANDecoder
from ..models.can import CANDecoder
from ..models.mdn import MDNDecoder
from ..models.san import SANDecoder
from ..modules import MDNDecoderLayer
from ..modules.average_attention import AverageAttention
from ..modules.compressed_attention import CANDecoderLayer, CompressedAttention
from ..modules.shared_attention import SHARED, SANDecoderLayer, SharedWeightsAttention

_LAYER_FORWARDS = (TransformerDecoderLayerBase.forward, MDNDecoderLayer.forward, SANDecoderLayer.forward)
#: the peers' decoders: decoded by the packed route where :func:`packed_unsupported_reason` allows, else
#: through their own forward (:func:`incremental_unsupported_reason`)
PEER_DECODERS = (AANDecoder, CANDecoder, SANDecoder)


def _inherits(obj, name: str, *owners) -> bool:
    """``obj``'s method ``name`` is one of ``owners``' (not overridden in a subclass)."""
    return getattr(type(obj), name, None) in tuple(getattr(owner, name, None) for owner in owners)


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


def _self_attention_unsupported_reason(layer, i: int) -> Optional[str]:
    """fairseq's attention, AAN's average block or SAN's shared-weights attention, each with its own forward."""
    attn, where = layer.self_attn, f"decoder layer {i} self attention"
    for kind in (AverageAttention, SharedWeightsAttention):
        if isinstance(attn, kind):
            return None if _inherits(attn, "forward", kind) else f"{where} ({type(attn).__name__}) has its own forward"
    reason = _attention_unsupported_reason(attn, where)
    if reason is None and not attn.self_attention:
        return f"decoder layer {i} attention is not self- then encoder-decoder attention"
    return reason


def _decoder_layer_unsupported_reason(layer, i: int) -> Optional[str]:
    if not isinstance(layer, TransformerDecoderLayerBase) or type(layer).forward not in _LAYER_FORWARDS:
        return f"decoder layer {i} ({type(layer).__name__}) has its own forward"
    if not _inherits(layer, "residual_connection", TransformerDecoderLayerBase):
        return f"decoder layer {i} has its own residual connection"
    shared_cross = getattr(layer, "cross_role", None) == SHARED  # SAN: reuses the block's cross-attention
    if layer.encoder_attn is None and not shared_cross:
        return f"decoder layer {i} has no encoder attention"
    if any(getattr(layer, a, None) is not None for a in ("attn_ln", "c_attn", "ffn_layernorm", "w_resid")):
        return f"decoder layer {i} uses --scale-attn/--scale-heads/--scale-fc/--scale-resids"
    if (layer.fc1 is None) != (layer.fc2 is None):
        return f"decoder layer {i} has half an FFN"
    reason = _self_attention_unsupported_reason(layer, i)
    if reason is None and not shared_cross:
        reason = _attention_unsupported_reason(layer.encoder_attn, f"decoder layer {i} encoder attention")
        if reason is None and not layer.encoder_attn.encoder_decoder_attention:
            reason = f"decoder layer {i} attention is not self- then encoder-decoder attention"
    return reason


def _can_layer_unsupported_reason(layer, i: int) -> Optional[str]:
    if type(layer).forward is not CANDecoderLayer.forward:
        return f"decoder layer {i} ({type(layer).__name__}) has its own forward"
    attn = layer.compressed_attn
    if not isinstance(attn, CompressedAttention) or not _inherits(attn, "forward", CompressedAttention):
        return f"decoder layer {i} compressed attention ({type(attn).__name__}) has its own forward"
    if not _inherits(attn, "_keys_values", CompressedAttention):
        return f"decoder layer {i} compressed attention has its own keys and values"
    return None


def _decoder_methods_unsupported_reason(model, decoder, extra_owners=()) -> Optional[str]:
    """Why ``model``'s output is not fairseq's normalisation of ``decoder``'s Transformer features, or None;
    ``extra_owners``: further classes whose decoder methods are accepted."""
    for owner, name, allowed in (
        (model, "get_normalized_probs", (BaseFairseqModel, TransformerModelBase)),
        (model, "get_normalized_probs_scriptable", (BaseFairseqModel,)),
        (decoder, "forward", (TransformerDecoderBase, *extra_owners)),
        (decoder, "extract_features", (TransformerDecoderBase, *extra_owners)),
        (decoder, "extract_features_scriptable", (TransformerDecoderBase, *extra_owners)),
        (decoder, "output_layer", (TransformerDecoderBase, *extra_owners)),
        (decoder, "get_normalized_probs", (FairseqDecoder,)),
        (decoder, "get_normalized_probs_scriptable", (FairseqDecoder,)),
    ):
        if not _inherits(owner, name, *allowed):
            return f"{type(owner).__name__}.{name} is overridden"
    if decoder.adaptive_softmax is not None:
        return "adaptive softmax"
    if _dropout_at_inference(decoder):
        return "dropout at inference (--retain-dropout)"
    return None


def _encoder_decoder(model) -> Optional[str]:
    decoder = getattr(model, "decoder", None)
    if getattr(model, "encoder", None) is None or not isinstance(decoder, TransformerDecoderBase):
        return f"{type(model).__name__} is not an encoder-decoder with a fairseq Transformer decoder"
    return None


def packed_unsupported_reason(model) -> Optional[str]:
    """Why the packed route (:class:`.steps.TransformerSteps`, :class:`.compressed.CANSteps`) cannot decode
    ``model`` exactly as fairseq would, or None."""
    reason = _encoder_decoder(model)
    if reason is not None:
        return reason
    decoder = model.decoder
    san = isinstance(decoder, SANDecoder)  # its own layer loop, which hands the shared attention on
    reason = _decoder_methods_unsupported_reason(model, decoder, (SANDecoder,) if san else ())
    if reason is None and san and not _inherits(decoder, "_embed", SANDecoder):
        reason = f"{type(decoder).__name__}._embed is overridden"
    if reason is not None:
        return reason
    if decoder.cross_self_attention:
        return "--cross-self-attention"
    can = is_can(model)
    for i, layer in enumerate(decoder.layers):
        if can != isinstance(layer, CANDecoderLayer):
            return f"decoder layer {i} ({type(layer).__name__}): CAN layers mixed with others"
        reason = _can_layer_unsupported_reason(layer, i) if can else _decoder_layer_unsupported_reason(layer, i)
        if reason is not None:
            return reason
    return None


def is_can(model) -> bool:
    """Whether ``model``'s decoder layers are CAN's (compressed sub-layers; all or none are, see
    :func:`packed_unsupported_reason`)."""
    return any(isinstance(layer, CANDecoderLayer) for layer in model.decoder.layers)


def incremental_unsupported_reason(model) -> Optional[str]:
    """Why the incremental route (the model's own encoder and incremental decoder, :class:`.incremental.
    IncrementalSteps`) cannot decode ``model`` exactly as fairseq would, or None: it takes the peers'
    decoders (:data:`PEER_DECODERS`) that leave fairseq's normalisation of their logits alone."""
    reason = _encoder_decoder(model)
    if reason is not None:
        return reason
    decoder = model.decoder
    if not isinstance(decoder, PEER_DECODERS):
        return f"{type(decoder).__name__} is not a peer decoder ({', '.join(c.__name__ for c in PEER_DECODERS)})"
    if not isinstance(model.encoder, FairseqEncoder):
        return f"{type(model.encoder).__name__} is not a fairseq encoder"
    return _decoder_methods_unsupported_reason(model, decoder, (MDNDecoder, *PEER_DECODERS))


def decoder_unsupported_reason(model) -> Optional[str]:
    """Why the lean search cannot decode ``model`` exactly as fairseq would (by either route), or None."""
    reason = packed_unsupported_reason(model)
    if reason is None or incremental_unsupported_reason(model) is None:
        return None
    return reason


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
