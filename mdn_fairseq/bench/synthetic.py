"""Random-initialised fairseq models at any registered architecture's dims, without data.

What fairseq's ``build_model(args, task)`` needs from a task is its two dictionaries; this module makes
synthetic ones (the four specials, then ``w0``, ``w1``, ...) and the minimal task that holds them, and
builds a model the way ``fairseq-train --arch ARCH`` does: the architecture's defaults filled into an
``argparse.Namespace`` (flags given as overrides win), then the model class's ``build_model``.  The
benchmark builds its paper-dim models with it, the tests their tiny ones.
"""

import argparse
from typing import Tuple

import torch
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY
from torch import nn

from ..errors import MDNError  # importing mdn_fairseq registered the plugin's architectures


def synthetic_dictionary(size: int) -> Dictionary:
    """A fairseq dictionary of ``size`` symbols: fairseq's 4 specials (bos 0, pad 1, eos 2, unk 3), then
    ``w0``, ``w1``, ...  Raises :class:`MDNError` when ``size`` is below 5 (no room for a word)."""
    d = Dictionary()
    if size <= d.nspecial:
        raise MDNError(f"vocabulary size {size}: must be > {d.nspecial} (the specials bos, pad, eos, unk)")
    for i in range(size - len(d)):
        d.add_symbol(f"w{i}")
    return d


class DictionaryTask:
    """The part of a fairseq task that ``build_model`` reads: ``source_dictionary`` and ``target_dictionary``."""

    def __init__(self, source_dictionary: Dictionary, target_dictionary: Dictionary):
        self.source_dictionary = source_dictionary
        self.target_dictionary = target_dictionary


def synthetic_task(src_vocab: int, tgt_vocab: int) -> DictionaryTask:
    """A :class:`DictionaryTask` with synthetic dictionaries of ``src_vocab`` and ``tgt_vocab`` symbols."""
    return DictionaryTask(synthetic_dictionary(src_vocab), synthetic_dictionary(tgt_vocab))


def paper_vocab(arch: str) -> Tuple[int, int]:
    """(source, target) vocabulary sizes of the paper's speed comparison: 32K/10K for the architectures
    with the tricks (``mdn*``, and ``aan_mdn``/``can_mdn``: the small target BPE is one of the tricks),
    32K/32K for every other (``transformer``, ``mdn_transformer_*``, ``aan``, ``san``, ``can``)."""
    with_tricks = arch.startswith("mdn") or arch.endswith("_mdn")
    mdn = with_tricks and not arch.startswith("mdn_transformer")
    return (32000, 10000) if mdn else (32000, 32000)


def build_synthetic(arch: str, src_vocab: int, tgt_vocab: int, seed: int = 1, **overrides) -> nn.Module:
    """A random-initialised ``arch`` (any name ``fairseq-train --arch`` accepts) in eval mode, with
    synthetic dictionaries of ``src_vocab``/``tgt_vocab`` symbols, its weights drawn after
    ``torch.manual_seed(seed)``.  ``overrides`` are model flags by their argparse names
    (``decoder_layers=2``), set before the architecture's defaults so they win, as on the command line.
    Raises :class:`MDNError` for an unknown architecture."""
    if arch not in ARCH_MODEL_REGISTRY:
        raise MDNError(
            f"--synthetic: unknown architecture {arch!r}; e.g. transformer, mdn, mdn_tiny, "
            "mdn_transformer_tiny (any name `fairseq-train --arch` accepts)"
        )
    task = synthetic_task(src_vocab, tgt_vocab)
    torch.manual_seed(seed)
    args = argparse.Namespace(arch=arch, **overrides)
    ARCH_CONFIG_REGISTRY[arch](args)
    return ARCH_MODEL_REGISTRY[arch].build_model(args, task).eval()
