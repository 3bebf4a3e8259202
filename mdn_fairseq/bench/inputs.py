"""The benchmark's source sentences and the fairseq batches made of them.

Sentences are 1-D ``LongTensor``s of token ids ending in EOS; a batch is the dict a fairseq generator's
``generate`` reads (``id``, ``nsentences``, ``net_input.src_tokens`` left-padded ``(batch, src_len)``,
``net_input.src_lengths`` ``(batch,)``), made as ``fairseq-generate`` makes them: sorted by length.
"""

import os
from typing import Dict, List

import torch
from fairseq.data import Dictionary, data_utils

from ..errors import MDNError


def random_sentences(n: int, vocab: int, seed: int, min_len: int = 20, max_len: int = 30) -> List[torch.Tensor]:
    """``n`` sentences of ``min_len``..``max_len`` tokens (EOS included), the words drawn uniformly from
    the ids ``nspecial``..``vocab - 1`` by a generator seeded with ``seed`` (same seed, same sentences)."""
    g = torch.Generator().manual_seed(seed)
    eos, first = Dictionary().eos(), Dictionary().nspecial
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    return [
        torch.cat([torch.randint(first, vocab, (length - 1,), generator=g), torch.tensor([eos])]) for length in lengths
    ]


def count_sentences(path: str) -> int:
    """Non-empty lines of the text file ``path``; raises :class:`MDNError` naming ``--input`` when it
    does not exist."""
    if not os.path.isfile(path):
        raise MDNError(f"--input {path}: no such file")
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def read_sentences(path: str, dictionary: Dictionary) -> List[torch.Tensor]:
    """The non-empty lines of ``path`` (tokenised and BPE'd as the model's training data), encoded with
    ``dictionary`` (unknown words become ``<unk>``) and EOS appended.  Raises :class:`MDNError` when the
    file is missing or holds no sentence."""
    if not os.path.isfile(path):
        raise MDNError(f"--input {path}: no such file")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise MDNError(f"--input {path}: no sentences (one tokenised sentence per line expected)")
    return [dictionary.encode_line(line, add_if_not_exist=False, append_eos=True).long() for line in lines]


def make_batches(sentences: List[torch.Tensor], batch_size: int, pad: int, eos: int) -> List[Dict]:
    """fairseq batches of ``batch_size`` sentences (the last one may be smaller), sources left-padded
    with ``pad``; sentences sorted by length (ties by index), as fairseq sorts them."""
    order = sorted(range(len(sentences)), key=lambda i: (sentences[i].numel(), i))
    batches = []
    for start in range(0, len(order), batch_size):
        ids = order[start : start + batch_size]
        src = [sentences[i] for i in ids]
        batches.append(
            {
                "id": torch.tensor(ids),
                "nsentences": len(ids),
                "net_input": {
                    "src_tokens": data_utils.collate_tokens(src, pad, eos, left_pad=True),
                    "src_lengths": torch.tensor([s.numel() for s in src]),
                },
            }
        )
    return batches
