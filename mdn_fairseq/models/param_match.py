"""The paper's parameter-matching rule: a student's encoder is deepened until its parameter count matches
the baseline's (Lin et al. 2021, Sec. 4: the MDN's 22 encoder layers with a 10K target vocabulary match
Transformer-base, 6+6, with 32K/32K vocabularies).

Both models are counted as built (``fairseq-train --arch ARCH FLAGS`` with synthetic dictionaries of the
given sizes), on torch's ``meta`` device: shapes only, no memory, no initialisation cost, so paper-dim
models count in well under a second.  Encoder layers are identical, so a student's count is affine in its
depth: two builds (1 and 2 layers) give the closed form ``count(L) = count(1) + (L - 1) * per_layer``,
from which :func:`matched_encoder_layers` takes the depth closest to the baseline.  For example the
Multi30k En-De ``*_small`` configs' vocabularies (baseline joint BPE 3520/4480, MDN BPE 5784/2152)::

    matched_encoder_layers("mdn_transformer_small", (3520, 4480), "mdn_small", (5784, 2152))
    # -> ParamMatch(encoder_layers=8, student_params=8636800, baseline_params=8724480, per_layer=789760)

and at paper dims (32K/32K against 32K/10K) the authors' 22 layers of ``mdn``.
"""

import argparse
import shlex
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from fairseq.models import ARCH_MODEL_REGISTRY

from ..bench.models import count_params
from ..bench.synthetic import build_synthetic
from ..errors import MDNError


@dataclass(frozen=True)
class ParamMatch:
    """The result of :func:`matched_encoder_layers`; counts in parameters (not millions)."""

    encoder_layers: int  #: the student's encoder depth closest to the baseline's count
    student_params: int  #: the student's count at that depth
    baseline_params: int
    per_layer: int  #: parameters of one student encoder layer

    @property
    def ratio(self) -> float:
        """student / baseline parameters at the chosen depth."""
        return self.student_params / self.baseline_params


def model_flags(arch: str, flags: str = "") -> Dict[str, object]:
    """Model flags as ``fairseq-train`` parses them for ``--arch arch`` (e.g. a config's ``AAN_MDN_ARGS``:
    ``"--encoder-layers 4 --no-decoder-ffn"``) -> ``{"encoder_layers": 4, "no_decoder_ffn": True}``; only the
    flags given (the architecture fills the rest).  Raises :class:`MDNError` for an unknown architecture or
    a flag the architecture's model does not take (naming both)."""
    if arch not in ARCH_MODEL_REGISTRY:
        raise MDNError(f"unknown architecture {arch!r} (any name `fairseq-train --arch` accepts, e.g. mdn_small)")
    parser = argparse.ArgumentParser(prog=f"--arch {arch}", argument_default=argparse.SUPPRESS, add_help=False)
    ARCH_MODEL_REGISTRY[arch].add_args(parser)
    known, unknown = parser.parse_known_args(shlex.split(flags))
    if unknown:
        raise MDNError(f"--arch {arch} does not take {' '.join(unknown)!r} (in model flags {flags!r})")
    return vars(known)


def count_parameters(arch: str, vocab: Tuple[int, int], **overrides) -> int:
    """Parameters of ``arch`` with a source/target vocabulary of ``vocab`` = (source, target) symbols (fairseq's
    4 specials included) and model ``overrides`` (argparse names, e.g. ``encoder_layers=8``), counted on
    the ``meta`` device.  Raises :class:`MDNError` for an unknown architecture or a vocabulary below 5,
    :class:`~mdn_fairseq.errors.ArchitectureError` for an impossible configuration."""
    with torch.device("meta"):
        model = build_synthetic(arch, vocab[0], vocab[1], **overrides)
    return count_params(model)


def matched_encoder_layers(
    baseline_arch: str,
    baseline_vocab: Tuple[int, int],
    student_arch: str,
    student_vocab: Tuple[int, int],
    baseline_args: Optional[Dict[str, object]] = None,
    student_args: Optional[Dict[str, object]] = None,
) -> ParamMatch:
    """The paper's rule: the student encoder depth (>= 1) whose parameter count is closest to the baseline's.

    ``*_vocab``: (source, target) vocabulary sizes, e.g. the baseline's joint BPE (3520, 4480) and the
    student's small target vocabulary (5784, 2152); ``*_args``: model flags by argparse name (see
    :func:`model_flags`); ``encoder_layers`` in ``student_args`` is ignored (it is what is chosen).  A tie
    goes to the shallower encoder.  Raises :class:`MDNError` when a student with one encoder layer already
    exceeds the baseline's count by more than half a layer (no depth matches: its decoder or vocabulary is
    too large)."""
    student_args = {k: v for k, v in (student_args or {}).items() if k != "encoder_layers"}
    baseline = count_parameters(baseline_arch, baseline_vocab, **(baseline_args or {}))
    one = count_parameters(student_arch, student_vocab, encoder_layers=1, **student_args)
    per_layer = count_parameters(student_arch, student_vocab, encoder_layers=2, **student_args) - one
    if one - baseline > per_layer / 2:
        raise MDNError(
            f"{student_arch} with one encoder layer already has {one:,} parameters, {baseline_arch} {baseline:,}: "
            "no encoder depth matches; shrink the student's decoder or target vocabulary"
        )
    depth = max(1, 1 + round((baseline - one) / per_layer))
    candidates = [d for d in (depth - 1, depth, depth + 1) if d >= 1]
    best = min(candidates, key=lambda d: (abs(one + (d - 1) * per_layer - baseline), d))
    return ParamMatch(best, one + (best - 1) * per_layer, baseline, per_layer)
