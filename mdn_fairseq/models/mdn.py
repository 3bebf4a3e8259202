"""The Mini-Decoder Network (Lin et al. 2021) as a fairseq model: ``--arch mdn`` and its variants.

``MDNModel`` is fairseq's (legacy, argparse) ``TransformerModel``; only the decoder's layer and
output projection are swapped, each by its own flag, so every trick can be switched on alone:

========================  =====================================================================
trick                     flag(s)
========================  =====================================================================
shallow decoder           ``--decoder-layers 1`` (with a deeper ``--encoder-layers``)
single narrow head        ``--decoder-attention-heads 1 --decoder-attention-dim 64``
no decoder FFN            ``--no-decoder-ffn``
low-rank output layer     ``--output-rank 64`` (W = A·Bᵀ, A: V×E, B: H×E)
decoder-only dropout      ``--decoder-dropout P``
========================  =====================================================================

With every trick off (``--arch mdn_transformer_base``) the model is fairseq's ``transformer``:
same parameter names, same outputs.

Checkpoints of older plugin versions keep loading: the MDN's own parameter names (today only the
low-rank output projection's) carry a version (:data:`LowRankLinear.VERSION`, in the buffer
``decoder.output_projection.version``), and :meth:`MDNModel.upgrade_state_dict_named` renames older
layouts (:data:`LEGACY_NAMES`), after fairseq's own upgrades.
"""

import copy
from dataclasses import dataclass, field, fields
from typing import Dict, Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerDecoderBase, TransformerModel
from fairseq.models.transformer.transformer_legacy import base_architecture
from torch import Tensor

from ..errors import ArchitectureError
from ..modules import LowRankLinear, MDNDecoderLayer, decoder_attention_dim

#: Renames from each older layout of the low-rank output projection to the next (keys relative to
#: ``decoder.output_projection.``); the layout is the projection's ``version`` buffer, absent = 1.
LEGACY_NAMES: Dict[int, Dict[str, str]] = {
    1: {"down.weight": "B.weight", "up.weight": "A.weight"},  # plugin 0.1.0: down = Bᵀ, up = A
}


@dataclass
class MDNConfig(FairseqDataclass):
    """The MDN switches, on top of fairseq's ``TransformerConfig`` (all off by default)."""

    decoder_attention_dim: Optional[int] = field(
        default=None,
        metadata={
            "help": "inner width of the decoder's self- and cross-attention (q/k/v project the model "
            "width to it, the output projects back); default: --decoder-embed-dim. MDN: 64 with "
            "--decoder-attention-heads 1, i.e. one of Transformer-base's eight 64-dim heads"
        },
    )
    no_decoder_ffn: bool = field(
        default=False,
        metadata={"help": "remove the decoder's FFN sub-layer (no fc1/fc2/final_layer_norm parameters)"},
    )
    output_rank: int = field(
        default=0,
        metadata={
            "help": "factor the output projection as W = A·Bᵀ (A: V×E, B: H×E) with E = this rank; "
            "0 = full rank (fairseq's projection)"
        },
    )
    decoder_dropout: Optional[float] = field(
        default=None,
        metadata={"help": "dropout of the decoder only (default: --dropout); the paper uses 0"},
    )


def fill_mdn_defaults(args):
    """Give ``args`` (an ``argparse.Namespace``, changed in place) every MDN field it lacks, tricks off:
    older configs and plain namespaces."""
    for f in fields(MDNConfig):
        if not hasattr(args, f.name):
            setattr(args, f.name, f.default)
    if args.no_decoder_ffn and getattr(args, "decoder_ffn_embed_dim", None) is None:
        args.decoder_ffn_embed_dim = 0  # what "no FFN" means to the layer: an FFN of width 0


def check_mdn_args(args):
    """Refuse impossible MDN configurations: raises :class:`~mdn_fairseq.errors.ArchitectureError`
    (a ``ValueError``) naming the flag and the allowed values."""
    rank = args.output_rank
    if rank is None or rank < 0:
        raise ArchitectureError(f"--output-rank must be 0 (full rank) or a positive rank <= min(V, H); got {rank}")
    heads = args.decoder_attention_heads
    dim = args.decoder_attention_dim
    if dim is not None and (dim <= 0 or dim % heads != 0):
        raise ArchitectureError(
            f"--decoder-attention-dim ({dim}) must be a positive multiple of --decoder-attention-heads ({heads})"
        )
    ffn = getattr(args, "decoder_ffn_embed_dim", None)
    if args.no_decoder_ffn and ffn:
        raise ArchitectureError(
            f"--no-decoder-ffn removes the decoder FFN, so --decoder-ffn-embed-dim ({ffn}) cannot be used "
            "with it: drop one of the two (to put the FFN back, start from --arch mdn_transformer_base)"
        )
    if not args.no_decoder_ffn and ffn == 0:
        raise ArchitectureError("--decoder-ffn-embed-dim 0 means no decoder FFN: say so with --no-decoder-ffn")
    if args.decoder_dropout is not None and not 0.0 <= args.decoder_dropout < 1.0:
        raise ArchitectureError(f"--decoder-dropout must be in [0, 1); got {args.decoder_dropout}")
    narrow = dim is not None and dim != args.decoder_embed_dim
    if (narrow or args.no_decoder_ffn) and getattr(args, "cross_self_attention", False):
        raise ArchitectureError("--cross-self-attention is not supported with --decoder-attention-dim/--no-decoder-ffn")
    if args.no_decoder_ffn:
        for flag in ("scale_attn", "scale_heads", "scale_fc", "scale_resids"):
            if getattr(args, flag, False):
                raise ArchitectureError(f"--{flag.replace('_', '-')} is not supported with --no-decoder-ffn")
    if rank > 0:
        if getattr(args, "share_decoder_input_output_embed", False) or getattr(args, "share_all_embeddings", False):
            raise ArchitectureError(
                "--output-rank factors the output matrix, so it cannot be tied to the input embedding: "
                "drop --share-decoder-input-output-embed/--share-all-embeddings or use --output-rank 0"
            )
        if getattr(args, "adaptive_softmax_cutoff", None) is not None:
            raise ArchitectureError("--output-rank cannot be combined with --adaptive-softmax-cutoff")
        if getattr(args, "base_layers", 0):
            raise ArchitectureError("--output-rank cannot be combined with --base-layers")


class MDNDecoder(TransformerDecoderBase):
    """fairseq's Transformer decoder; MDN layers and a low-rank output projection when asked for."""

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        """fairseq's hook: fairseq's layer with every trick off, else an :class:`MDNDecoderLayer`."""
        if decoder_attention_dim(cfg) == cfg.decoder.embed_dim and not getattr(cfg, "no_decoder_ffn", False):
            return super().build_decoder_layer(cfg, no_encoder_attn)
        if cfg.checkpoint_activations or cfg.offload_activations:
            raise ArchitectureError("--checkpoint-activations is not supported for MDN decoder layers (they are tiny)")
        return MDNDecoderLayer(cfg, no_encoder_attn)

    def build_output_projection(self, cfg, dictionary, embed_tokens):
        """fairseq's hook: fairseq's V×H projection at ``--output-rank 0``, else a :class:`LowRankLinear`."""
        rank = getattr(cfg, "output_rank", 0) or 0
        if rank == 0:
            return super().build_output_projection(cfg, dictionary, embed_tokens)
        self.output_projection = LowRankLinear(self.output_embed_dim, len(dictionary), rank)


@register_model("mdn")
class MDNModel(TransformerModel):
    """fairseq's Transformer with the Mini-Decoder Network tricks of Lin et al. (2021), "Bag of Tricks
    for Optimizing Transformer Efficiency" (see the module docstring).

    ``forward(src_tokens, src_lengths, prev_output_tokens)`` is fairseq's: ``src_tokens`` (batch, src_len)
    left-padded, ``src_lengths`` (batch,), ``prev_output_tokens`` (batch, tgt_len) -> ``(logits, extra)``
    with ``logits`` (batch, tgt_len, V), unnormalised, and ``extra["attn"]`` the cross-attention weights.

    Subclasses with another decoder (the peers, :mod:`mdn_fairseq.models.peers`) set ``decoder_class``.
    """

    decoder_class = MDNDecoder  #: built by :meth:`build_decoder`; a :class:`MDNDecoder` subclass

    @classmethod
    def hub_models(cls):
        """No downloadable MDN checkpoints (fairseq's Transformer ones are not MDNs)."""
        return {}

    @classmethod
    def add_args(cls, parser):
        """fairseq's Transformer flags plus the MDN switches of :class:`MDNConfig`."""
        super().add_args(parser)
        gen_parser_from_dataclass(parser, MDNConfig(), delete_default=True)

    @classmethod
    def build_model(cls, args, task):
        """Fill the MDN defaults into ``args``, check them (raises
        :class:`~mdn_fairseq.errors.ArchitectureError`), build as fairseq's Transformer."""
        fill_mdn_defaults(args)
        base_architecture(args)
        check_mdn_args(args)
        return super().build_model(args, task)

    @classmethod
    def build_decoder(cls, cfg, tgt_dict, embed_tokens):
        """fairseq's hook: the model's ``decoder_class`` (an :class:`MDNDecoder` here), with
        ``--decoder-dropout`` as its dropout."""
        cfg = TransformerConfig.from_namespace(cfg)
        if getattr(cfg, "decoder_dropout", None) is not None:
            cfg = copy.copy(cfg)  # the encoder and the saved config keep --dropout
            cfg.dropout = cfg.decoder_dropout
        return cls.decoder_class(cfg, tgt_dict, embed_tokens, no_encoder_attn=cfg.no_cross_attention)

    def upgrade_state_dict_named(self, state_dict: Dict[str, Tensor], name: str):
        """Upgrade ``state_dict`` (in place) from older fairseq and plugin versions: fairseq's upgrades
        (``super``), then the low-rank output projection's older names (:data:`LEGACY_NAMES`), one
        version at a time, ending with the current ``version`` buffer.  ``name`` is this model's prefix
        in ``state_dict`` ("" for a whole checkpoint)."""
        super().upgrade_state_dict_named(state_dict, name)
        if isinstance(self.decoder.output_projection, LowRankLinear):
            upgrade_low_rank_names(state_dict, f"{name}." if name else "")


def upgrade_low_rank_names(state_dict: Dict[str, Tensor], prefix: str = "") -> None:
    """Rename ``{prefix}decoder.output_projection.*`` from its recorded layout version (absent = 1) to
    :data:`LowRankLinear.VERSION` (in place; tensors unchanged) and record that version."""
    base = f"{prefix}decoder.output_projection."
    version_key = base + "version"
    version = int(state_dict[version_key].item()) if version_key in state_dict else 1
    for v in range(version, LowRankLinear.VERSION):
        for old, new in LEGACY_NAMES[v].items():
            if base + old in state_dict:
                state_dict[base + new] = state_dict.pop(base + old)
    state_dict[version_key] = Tensor([LowRankLinear.VERSION])


# ---------------------------------------------------------------------------------------------
# Architectures: defaults, then a base.  Every default is a plain getattr, so any flag overrides it.


@register_model_architecture("mdn", "mdn_transformer_base")
def mdn_transformer_base(args):
    """All tricks off: fairseq's Transformer-base. Switch tricks on one flag at a time (ablations)."""
    fill_mdn_defaults(args)
    base_architecture(args)


def _mini_decoder(args, attention_dim, rank):
    """The mini decoder's defaults: 1 layer, 1 head of ``attention_dim``, no FFN, rank-``rank`` output."""
    args.decoder_layers = getattr(args, "decoder_layers", 1)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 1)
    args.decoder_attention_dim = getattr(args, "decoder_attention_dim", attention_dim)
    args.no_decoder_ffn = getattr(args, "no_decoder_ffn", True)
    args.output_rank = getattr(args, "output_rank", rank)


@register_model_architecture("mdn", "mdn")
def mdn_architecture(args):
    """The paper's MDN: Transformer-base dims, a 1-layer single-head (64-dim) FFN-free decoder,
    rank-64 output; 22 encoder layers, which with a 10K target vocabulary param-match
    Transformer-base with 32K/32K vocabularies (the authors' choice)."""
    args.encoder_layers = getattr(args, "encoder_layers", 22)
    _mini_decoder(args, attention_dim=64, rank=64)
    mdn_transformer_base(args)


@register_model_architecture("mdn", "mdn_wmt_en_de")
def mdn_wmt_en_de(args):
    """The authors' WMT14 En-De student: ``mdn`` with pre-norm (the deep-model setup)."""
    args.encoder_normalize_before = getattr(args, "encoder_normalize_before", True)
    args.decoder_normalize_before = getattr(args, "decoder_normalize_before", True)
    mdn_architecture(args)


@register_model_architecture("mdn", "mdn_deep")
def mdn_deep(args):
    """Student of a pre-norm 48-6 teacher: its 6 decoder layers and the 32K->10K target vocabulary
    buy 16 more encoder layers (the same param-matching rule as ``mdn``), 64 in all."""
    args.encoder_layers = getattr(args, "encoder_layers", 64)
    mdn_wmt_en_de(args)


def _tiny_dims(args):
    """64-wide model dims (4 encoder heads of 16, FFN 128), dropout 0.1: CPU scale."""
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 64)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 128)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 4)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 64)
    args.dropout = getattr(args, "dropout", 0.1)


@register_model_architecture("mdn", "mdn_transformer_tiny")
def mdn_transformer_tiny(args):
    """Tiny dims (64 wide, 4 heads of 16), tricks off, 2+2 layers: a CPU-sized teacher/baseline."""
    _tiny_dims(args)
    args.encoder_layers = getattr(args, "encoder_layers", 2)
    args.decoder_layers = getattr(args, "decoder_layers", 2)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 4)
    mdn_transformer_base(args)


@register_model_architecture("mdn", "mdn_tiny")
def mdn_tiny(args):
    """Tiny dims for CPU tests and demos: 4 encoder layers, one 16-dim head (one of 4), rank 16."""
    _tiny_dims(args)
    args.encoder_layers = getattr(args, "encoder_layers", 4)
    _mini_decoder(args, attention_dim=16, rank=16)
    mdn_transformer_base(args)


def _small_dims(args):
    """256-wide model dims (4 encoder heads of 64, FFN 1024), dropout 0.1: the paper's proportions at a quarter
    of its width (Transformer-base: 512 wide, 8 heads of 64, FFN 2048)."""
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 256)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 1024)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 4)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 256)
    args.dropout = getattr(args, "dropout", 0.1)


@register_model_architecture("mdn", "mdn_transformer_small")
def mdn_transformer_small(args):
    """Small dims (256 wide, 4 heads of 64, FFN 1024), tricks off, 3+3 layers: the Multi30k teacher/baseline
    of ``configs/multi30k_*_small.sh``."""
    _small_dims(args)
    args.encoder_layers = getattr(args, "encoder_layers", 3)
    args.decoder_layers = getattr(args, "decoder_layers", 3)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 4)
    mdn_transformer_base(args)


@register_model_architecture("mdn", "mdn_small")
def mdn_small(args):
    """The student of ``mdn_transformer_small``: small dims, one decoder layer with one 64-dim head (one of the
    teacher's four), no decoder FFN, rank-64 output; 8 encoder layers: the depth whose parameter count is
    closest to the 3+3 baseline's (the paper's rule, :func:`mdn_fairseq.models.param_match.matched_encoder_layers`)
    with the vocabularies of ``configs/multi30k_*_small.sh`` (En-De: 8.64M against 8.72M; En-Fr: 8.63M
    against 8.78M; 7 or 9 layers would be 10% off)."""
    _small_dims(args)
    args.encoder_layers = getattr(args, "encoder_layers", 8)
    _mini_decoder(args, attention_dim=64, rank=64)
    mdn_transformer_base(args)
