"""The average attention network (AAN; Zhang et al., ACL 2018) as a peer model: ``--arch aan``,
``aan_tiny`` and the paper's Table 7 row "AAN + Ours", ``aan_mdn``.

The decoder's self-attention is the average block of :mod:`mdn_fairseq.modules.average_attention`
(``--aan-ffn``, ``--no-aan-gating``); everything else, and every MDN trick flag, is the MDN model's.
"""

from fairseq.models import register_model, register_model_architecture

from ..modules.average_attention import AANDecoderLayer
from .mdn import MDNDecoder, mdn_architecture, mdn_transformer_base, mdn_transformer_small, mdn_transformer_tiny
from .peers import PeerModel


class AANDecoder(MDNDecoder):
    """The MDN decoder (low-rank output when asked for) with :class:`AANDecoderLayer` layers."""

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        return AANDecoderLayer(cfg, no_encoder_attn)


@register_model("aan")
class AANModel(PeerModel):
    """Transformer whose decoder self-attention is the average attention block."""

    peer = "aan"
    decoder_class = AANDecoder


@register_model_architecture("aan", "aan")
def aan_architecture(args):
    """AAN at Transformer-base dims (6+6, post-norm): average block with gating and without its own FFN
    (the AAN authors' choice), then cross-attention and the layer's FFN."""
    mdn_transformer_base(args)


@register_model_architecture("aan", "aan_tiny")
def aan_tiny(args):
    """Tiny AAN for CPU tests and demos: the dims of ``mdn_transformer_tiny`` (64 wide, 2+2 layers)."""
    mdn_transformer_tiny(args)


@register_model_architecture("aan", "aan_small")
def aan_small(args):
    """Small AAN (Multi30k ``*_small`` configs): the dims of ``mdn_transformer_small`` (256 wide, 3+3 layers)."""
    mdn_transformer_small(args)


@register_model_architecture("aan", "aan_mdn")
def aan_mdn(args):
    """Table 7, "AAN + Ours": the ``mdn`` tricks on AAN (1 decoder layer, one 64-dim cross-attention
    head, no FFN, rank-64 output, post-norm). 22 encoder layers, by the paper's rule: with 32K source /
    10K target vocabularies the most that keep the model within Transformer-base's parameters (32K/32K;
    the gate, 2d x 2d, costs a third of an encoder layer; tests/test_peers.py prints the counts)."""
    args.encoder_layers = getattr(args, "encoder_layers", 22)
    mdn_architecture(args)
