"""The compressed attention network (CAN; Li et al., AAAI 2021) as a peer model: ``--arch can``,
``can_tiny`` and the paper's Table 7 row "CAN + Ours", ``can_mdn``.

Each decoder layer is one compressed sub-layer (:mod:`mdn_fairseq.modules.compressed_attention`);
``--can-value-dim`` sets its value width. ``--decoder-attention-heads``/``--decoder-attention-dim``
(queries and keys), ``--decoder-layers``, ``--output-rank`` and ``--decoder-dropout`` apply as for MDN;
``--no-decoder-ffn`` does not (there is no FFN).
"""

from fairseq.models import register_model, register_model_architecture

from ..modules.compressed_attention import CANDecoderLayer
from .mdn import MDNDecoder, mdn_transformer_base, mdn_transformer_small, mdn_transformer_tiny, mdn_wmt_en_de
from .peers import PeerModel


class CANDecoder(MDNDecoder):
    """The MDN decoder (low-rank output when asked for) with :class:`CANDecoderLayer` layers."""

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        return CANDecoderLayer(cfg, no_encoder_attn)


@register_model("can")
class CANModel(PeerModel):
    """Transformer whose decoder layers are single compressed sub-layers."""

    peer = "can"
    decoder_class = CANDecoder


def _pre_norm(args):
    args.encoder_normalize_before = getattr(args, "encoder_normalize_before", True)
    args.decoder_normalize_before = getattr(args, "decoder_normalize_before", True)


@register_model_architecture("can", "can")
def can_architecture(args):
    """The CAN authors' WMT setting: Transformer-base dims, 12 encoder + 2 decoder layers, pre-norm,
    8 heads, values 2048 wide (8 x 256)."""
    args.encoder_layers = getattr(args, "encoder_layers", 12)
    args.decoder_layers = getattr(args, "decoder_layers", 2)
    args.can_value_dim = getattr(args, "can_value_dim", 2048)
    _pre_norm(args)
    mdn_transformer_base(args)


@register_model_architecture("can", "can_tiny")
def can_tiny(args):
    """Tiny CAN for CPU tests and demos: ``mdn_transformer_tiny`` dims (64 wide, 2+2 layers, 4 heads),
    pre-norm, values 128 wide (the tiny FFN's width)."""
    args.can_value_dim = getattr(args, "can_value_dim", 128)
    _pre_norm(args)
    mdn_transformer_tiny(args)


@register_model_architecture("can", "can_small")
def can_small(args):
    """Small CAN (Multi30k ``*_small`` configs): ``mdn_transformer_small`` dims (256 wide, 3+3 layers, 4 heads),
    pre-norm, values 1024 wide (the small FFN's width)."""
    args.can_value_dim = getattr(args, "can_value_dim", 1024)
    _pre_norm(args)
    mdn_transformer_small(args)


@register_model_architecture("can", "can_mdn")
def can_mdn(args):
    """Table 7, "CAN + Ours": the ``mdn_wmt_en_de`` tricks on CAN (pre-norm, 1 decoder layer, one 64-dim
    head, rank-64 output). The narrow head applies to the values too (``--can-value-dim 64``): CAN's wide
    values stand in for the FFN, which the tricks remove. 22 encoder layers: with 32K source / 10K target
    vocabularies the most that keep the model within Transformer-base's parameters (32K/32K), as ``mdn``
    (tests/test_peers.py prints the counts)."""
    args.encoder_layers = getattr(args, "encoder_layers", 22)
    args.can_value_dim = getattr(args, "can_value_dim", 64)
    args.no_decoder_ffn = getattr(args, "no_decoder_ffn", False)  # no FFN to remove (refused if set)
    mdn_wmt_en_de(args)
