"""The arithmetic of one translation pass, counted from a model's module shapes (the roofline's numerator).

What is counted: the multiply-adds of every matrix product the model needs to translate, at 2 FLOPs per
multiply-add -- every linear layer (``nn.Linear`` and its int8 dynamic-quantized form; a low-rank output
layer is its two factors) and the attention products (scores ``q·Kᵀ`` and context ``weights·V``).  Not
counted: bias adds, softmax and log-softmax, layer norms, activations, residuals, embedding lookups,
the beam search -- element-wise work that has no matrix product's arithmetic intensity; its time is
the "overhead" of a row.

For what, per sentence of ``S`` source tokens (EOS included) whose hypotheses each take ``T`` decoder
steps (the output tokens, EOS included), with beam ``k``:

- encoder linears: ``S`` rows; self-attention products ``2·S²·a`` multiply-adds per layer (``a`` the
  attention width, heads × head dim);
- decoder linears: ``k·T`` rows (one new position per hypothesis and step), except the projections
  of the encoder output (cross-attention keys and values), which are needed once per sentence:
  ``S`` rows.  A generator that recomputes them per hypothesis (fairseq's ``SequenceGenerator``)
  spends more than this count: the surplus is its overhead;
- decoder self-attention products: at step ``t`` a hypothesis attends over ``t`` positions:
  ``2·a·T(T+1)/2`` multiply-adds; cross-attention ``2·a·S·T``; per hypothesis.

Models are walked module by module, so any model made of fairseq's Transformer layers (and the
plugin's) is counted: the groups are the profile's (:data:`GROUPS`; ``other`` holds linears outside
them, e.g. ``project_in_dim``).  The attention modules that are known (:data:`ATTENTION_PRODUCTS`:
fairseq's ``MultiheadAttention`` and subclasses, the peers' average, shared-weights and compressed
attention) have their products counted; a module with a weight matrix the counter does not know
raises :class:`FlopCountError`, so that no arithmetic is silently left out.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Set, Tuple

from fairseq.modules import MultiheadAttention
from torch import nn

from ..errors import MDNError
from ..modules import AverageAttention, CompressedAttention, SharedWeightsAttention

GROUPS = ("enc attn", "enc FFN", "dec attn", "dec FFN", "output proj", "other")


class FlopCountError(MDNError):
    """The model holds a module whose arithmetic the counter does not know, or the lengths are bad."""


@dataclass(frozen=True)
class Lengths:
    """The sums over a pass's sentences that the FLOP counts are linear in.

    ``src`` = ΣS, ``src_sq`` = ΣS², ``steps`` = ΣT, ``tri`` = ΣT(T+1)/2 (self-attention positions),
    ``cross`` = ΣS·T, for source lengths S and decoder steps T per sentence; ``beam`` hypotheses each."""

    sentences: int
    src: int
    src_sq: int
    steps: int
    tri: int
    cross: int
    beam: int

    @classmethod
    def of(cls, src_lens: Sequence[int], tgt_lens: Sequence[int], beam: int) -> "Lengths":
        """From per-sentence source lengths (tokens, EOS included), decoder steps (output tokens, EOS
        included) and the beam.  Raises :class:`FlopCountError` for mismatched or non-positive values."""
        src_lens, tgt_lens = [int(s) for s in src_lens], [int(t) for t in tgt_lens]
        if len(src_lens) != len(tgt_lens):
            raise FlopCountError(f"{len(src_lens)} source lengths but {len(tgt_lens)} target lengths")
        if beam < 1 or any(v < 1 for v in src_lens + tgt_lens):
            raise FlopCountError("lengths and the beam must be >= 1")
        return cls(
            sentences=len(src_lens),
            src=sum(src_lens),
            src_sq=sum(s * s for s in src_lens),
            steps=sum(tgt_lens),
            tri=sum(t * (t + 1) // 2 for t in tgt_lens),
            cross=sum(s * t for s, t in zip(src_lens, tgt_lens)),
            beam=beam,
        )


def _width(attn: nn.Module) -> int:
    return attn.num_heads * attn.head_dim


def _mha_products(attn: MultiheadAttention, side: str, n: Lengths) -> int:
    """Scores and context, each ``a`` multiply-adds per (query, key) pair."""
    if side == "encoder":
        return 2 * 2 * _width(attn) * n.src_sq
    pairs = n.cross if attn.encoder_decoder_attention else n.tri
    return 2 * 2 * _width(attn) * n.beam * pairs


def _compressed_products(attn: CompressedAttention, side: str, n: Lengths) -> int:
    """One softmax over the S source keys and the t target keys so far: scores (query/key width) and
    context (value width)."""
    value_width = attn.num_heads * attn.value_head_dim
    return 2 * (_width(attn) + value_width) * n.beam * (n.cross + n.tri)


def _shared_products(attn: SharedWeightsAttention, side: str, n: Lengths) -> int:
    """The block's weights applied to this layer's values: the context product only."""
    return 2 * _width(attn) * n.beam * n.tri


#: attention module type -> (its matrix products for a side and the lengths, the names of its linears that
#: project the encoder output: once per sentence).  Subclasses (the narrow head) match their base.
ATTENTION_PRODUCTS: Dict[type, Tuple[Callable[[nn.Module, str, Lengths], int], Callable[[nn.Module], Set[str]]]] = {
    MultiheadAttention: (
        _mha_products,
        lambda a: {"k_proj", "v_proj"} if a.encoder_decoder_attention else set(),
    ),
    CompressedAttention: (_compressed_products, lambda a: {"enc_k_proj", "enc_v_proj"}),
    SharedWeightsAttention: (_shared_products, lambda a: set()),
    AverageAttention: (lambda a, side, n: 0, lambda a: set()),  # a cumulative sum; its linears count
}


def _attention_kind(module: nn.Module) -> Optional[type]:
    return next((t for t in ATTENTION_PRODUCTS if isinstance(module, t)), None)


def _linear_shape(module: nn.Module) -> Optional[Tuple[int, int]]:
    """(in, out) features of a linear layer (float or int8 dynamic-quantized), else None."""
    from torch.ao.nn.quantized import Linear as QuantizedLinear

    if isinstance(module, (nn.Linear, QuantizedLinear)):
        return module.in_features, module.out_features
    return None


def _group(side: str, path: str, in_attention: bool) -> str:
    leaf = path.rsplit(".", 1)[-1]
    if in_attention:
        return "enc attn" if side == "encoder" else "dec attn"
    if leaf in ("fc1", "fc2"):
        return "enc FFN" if side == "encoder" else "dec FFN"
    if side == "decoder" and path.split(".", 1)[0] == "output_projection":
        return "output proj"
    return "other"


def _projects_encoder_output(path: str, attn_path: Optional[str], attn: Optional[nn.Module]) -> bool:
    """Whether the linear at ``path`` is one of attention ``attn``'s (at ``attn_path``) projections of the
    encoder output (needed once per sentence)."""
    if attn is None:
        return False
    parent_path, _, leaf = path.rpartition(".")
    return parent_path == attn_path and leaf in ATTENTION_PRODUCTS[_attention_kind(attn)][1](attn)


def _count_side(module: nn.Module, side: str, n: Lengths, totals: Dict[str, int]) -> None:
    """Add the FLOPs of ``module`` (the encoder or the decoder) to ``totals``.  A module object that a
    forward uses twice (shared, not copied) is counted once, as ``named_modules`` lists it once."""
    modules = dict(module.named_modules())
    for path, m in modules.items():
        attn_path = next((p for p in _ancestors(path) if _attention_kind(modules[p]) is not None), None)
        shape = _linear_shape(m)
        kind = _attention_kind(m)
        if kind is not None:
            totals[_group(side, path, True)] += ATTENTION_PRODUCTS[kind][0](m, side, n)
        elif shape is not None:
            attn = modules[attn_path] if attn_path is not None else None
            once = side == "encoder" or _projects_encoder_output(path, attn_path, attn)
            rows = n.src if once else n.beam * n.steps
            totals[_group(side, path, attn_path is not None)] += 2 * shape[0] * shape[1] * rows
        elif not isinstance(m, nn.Embedding) and any(p.dim() >= 2 for p in m.parameters(recurse=False)):
            raise FlopCountError(
                f"cannot count the arithmetic of {side}.{path} ({type(m).__name__}): it holds a weight "
                "matrix but is no linear layer or known attention; add it to "
                "mdn_fairseq.bench.flops.ATTENTION_PRODUCTS"
            )


def _ancestors(path: str):
    """The module paths above ``path``, nearest first (``a.b.c`` -> ``a.b``, ``a``)."""
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)] if path else []


def count_flops(model: nn.Module, src_lens: Sequence[int], tgt_lens: Sequence[int], beam: int) -> Dict[str, int]:
    """FLOPs (2 per multiply-add) of translating sentences of ``src_lens`` source tokens (EOS included)
    into ``tgt_lens`` decoder steps each (output tokens, EOS included) with ``beam`` hypotheses, per
    group of :data:`GROUPS` (see the module docstring for what is counted).

    ``model``: a fairseq encoder-decoder model (``model.encoder``, ``model.decoder``), float or int8.
    Raises :class:`FlopCountError` for bad lengths or a module the counter does not know."""
    n = Lengths.of(src_lens, tgt_lens, beam)
    if not (hasattr(model, "encoder") and hasattr(model, "decoder")):
        raise FlopCountError(f"{type(model).__name__}: not an encoder-decoder model (no .encoder/.decoder)")
    totals = {g: 0 for g in GROUPS}
    _count_side(model.encoder, "encoder", n, totals)
    _count_side(model.decoder, "decoder", n, totals)
    return totals
