"""What the paper's peers (AAN, SAN, CAN; :mod:`.aan`, :mod:`.san`, :mod:`.can`) share: their flags,
the build-time checks and the model base class.

Each peer is an :class:`~mdn_fairseq.models.mdn.MDNModel` whose decoder builds other layers, so every
MDN trick stays a flag on it (``--decoder-layers``, ``--decoder-attention-heads 1
--decoder-attention-dim 64``, ``--no-decoder-ffn``, ``--output-rank``, ``--decoder-dropout``). All
peers accept all peer flags, so that a flag given to the wrong peer fails with a message saying which
architecture has that part, instead of being ignored.
"""

from dataclasses import dataclass, field, fields
from typing import List, Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models.transformer.transformer_legacy import base_architecture

from ..errors import ArchitectureError
from .mdn import MDNModel, fill_mdn_defaults


@dataclass
class PeerConfig(FairseqDataclass):
    """The peers' own switches. Each belongs to one peer (``PEER_FLAGS``); the others refuse it."""

    aan_ffn: bool = field(
        default=False,
        metadata={
            "help": "AAN (--arch aan*): apply an FFN of width --decoder-ffn-embed-dim to the "
            "cumulative average (off by default: the AAN authors found it redundant)"
        },
    )
    no_aan_gating: bool = field(
        default=False,
        metadata={
            "help": "AAN (--arch aan*): no input/forget gates (no gate parameters); the block "
            "returns the (FFN of the) average"
        },
    )
    can_value_dim: Optional[int] = field(
        default=None,
        metadata={
            "help": "CAN (--arch can*): width of the compressed sub-layer's values, a multiple of "
            "--decoder-attention-heads (can: 2048 = 8 heads x 256)"
        },
    )
    san_self_attn_blocks: Optional[str] = field(
        default=None,
        metadata={
            "help": "SAN (--arch san*): comma-separated sizes of the blocks of consecutive decoder "
            "layers that share self-attention weights, adding up to --decoder-layers (e.g. 2,4); "
            "default: all 1 (no sharing)"
        },
    )
    san_cross_attn_blocks: Optional[str] = field(
        default=None,
        metadata={
            "help": "SAN (--arch san*): the same for encoder-decoder attention, whose whole output "
            "is shared in a block (e.g. 4,2); default: all 1"
        },
    )


PEER_FLAGS = {
    "aan": {"aan_ffn": "average attention", "no_aan_gating": "average attention"},
    "can": {"can_value_dim": "compressed attention"},
    "san": {"san_self_attn_blocks": "shared attention", "san_cross_attn_blocks": "shared attention"},
}
# flags that combine with every peer (--decoder-attention-heads etc.) need no entry; these do not:
NOT_FOR = {
    "can": {
        "no_decoder_ffn": "CAN decoder layers have no FFN sub-layer to remove (its role is played "
        "by the values, width --can-value-dim)",
        "no_cross_attention": "the CAN sub-layer attends to the source (its keys include the encoder's)",
    }
}
# fairseq decoder options the peers' layers do not implement
UNSUPPORTED = (
    "cross_self_attention",
    "scale_attn",
    "scale_heads",
    "scale_fc",
    "scale_resids",
    "checkpoint_activations",
    "offload_activations",
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_blocks(flag: str, value: Optional[str], layers: int) -> List[int]:
    """SAN block sizes from ``value`` ("2,4"; None = all 1) for a ``layers``-layer decoder.

    Raises:
        ArchitectureError: not a comma list of positive integers, or not adding up to ``layers``.
    """
    if value is None or value == "":
        return [1] * layers
    try:
        blocks = [int(b) for b in str(value).split(",")]
    except ValueError:
        raise ArchitectureError(f"{_flag(flag)} {value!r}: expected comma-separated block sizes, e.g. 2,4") from None
    if any(b <= 0 for b in blocks):
        raise ArchitectureError(f"{_flag(flag)} {value}: block sizes must be positive integers (1 = no sharing)")
    if sum(blocks) != layers:
        raise ArchitectureError(
            f"{_flag(flag)} {value}: the block sizes add up to {sum(blocks)}, but the decoder "
            f"has {layers} layers (--decoder-layers); give sizes that add up to {layers}"
        )
    return blocks


def fill_peer_defaults(args, peer: str):
    """Give ``args`` the defaults of ``peer``'s own flags (older configs, plain namespaces)."""
    defaults = {f.name: f.default for f in fields(PeerConfig)}
    for name in PEER_FLAGS[peer]:
        if getattr(args, name, None) is None:
            setattr(args, name, defaults[name])


def check_peer_args(args, peer: str):
    """Refuse flags of other peers and impossible combinations, naming the flag, value and fix.

    Raises:
        ArchitectureError: see the messages.
    """
    arch = getattr(args, "arch", peer)
    for other, flags in PEER_FLAGS.items():
        for name, part in flags.items():
            value = getattr(args, name, None)
            if other != peer and value not in (None, False):
                raise ArchitectureError(
                    f"{_flag(name)} {value}: --arch {arch} has no {part}; the flag belongs "
                    f"to the {other.upper()} architectures ({other}, {other}_tiny, ...)"
                )
    for name, why in NOT_FOR.get(peer, {}).items():
        if getattr(args, name, False):
            raise ArchitectureError(f"{_flag(name)} cannot be used with --arch {arch}: {why}")
    for name in UNSUPPORTED:
        if getattr(args, name, False):
            raise ArchitectureError(f"{_flag(name)} is not supported by the {peer.upper()} decoder (--arch {arch})")
    if peer == "aan" and args.aan_ffn and args.no_decoder_ffn:
        raise ArchitectureError(
            "--aan-ffn needs an FFN width (--decoder-ffn-embed-dim), which --no-decoder-ffn "
            "removes: drop one of the two"
        )
    if peer == "can":
        heads = args.decoder_attention_heads
        if args.can_value_dim is None or args.can_value_dim <= 0 or args.can_value_dim % heads:
            raise ArchitectureError(
                f"--can-value-dim {args.can_value_dim} must be a positive multiple of "
                f"--decoder-attention-heads ({heads})"
            )
    if peer == "san":
        blocks = [parse_blocks(name, getattr(args, name), args.decoder_layers) for name in PEER_FLAGS["san"]]
        if max(blocks[1]) > 1 and getattr(args, "no_cross_attention", False):
            raise ArchitectureError(
                f"--san-cross-attn-blocks {args.san_cross_attn_blocks}: there is no "
                "cross-attention to share (--no-cross-attention); use blocks of 1"
            )
        if max(max(b) for b in blocks) > 1:
            for name in ("decoder_layerdrop", "decoder_layers_to_keep"):
                if getattr(args, name, None):
                    raise ArchitectureError(
                        f"{_flag(name)} would break the SAN blocks (a dropped layer may be "
                        "the one that computes the shared attention): use blocks of 1"
                    )


class PeerModel(MDNModel):
    """An MDN model whose decoder is a peer's, with the peer flags (``peer``): subclasses set ``peer`` and
    ``decoder_class`` (:meth:`MDNModel.build_decoder` builds it, with ``--decoder-dropout``)."""

    peer: str = ""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        gen_parser_from_dataclass(parser, PeerConfig(), delete_default=True)

    @classmethod
    def build_model(cls, args, task):
        """fairseq's hook: fill the defaults, check the peer flags, then build as :class:`MDNModel`.

        Raises:
            ArchitectureError (also a ``ValueError``): an impossible configuration.
        """
        fill_mdn_defaults(args)
        fill_peer_defaults(args, cls.peer)
        base_architecture(args)
        check_peer_args(args, cls.peer)
        return super().build_model(args, task)
