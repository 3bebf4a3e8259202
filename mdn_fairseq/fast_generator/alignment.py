"""``--print-alignment``: word alignments from the attention the beam search returns.

What fairseq's ``SequenceGeneratorWithAlignment.generate`` does after its search for models without
``full_context_alignment`` (those are handed to fairseq, see :mod:`.options`): each hypothesis's
``attention`` (src_len, tgt_len) goes through fairseq's ``utils.extract_hard_alignment`` or
``extract_soft_alignment`` with the source and the hypothesis collated as fairseq collates them.
"""

from typing import Dict, List

from fairseq import utils
from fairseq.data import data_utils
from torch import Tensor

EXTRACTORS = {"hard": utils.extract_hard_alignment, "soft": utils.extract_soft_alignment}


def add_alignments(
    finalized: List[List[Dict[str, Tensor]]],
    src_tokens: Tensor,
    beam: int,
    pad: int,
    eos: int,
    kind: str = "hard",
    left_pad_target: bool = False,
) -> None:
    """Fill ``hypo["alignment"]`` of every hypothesis in ``finalized`` (bsz lists of ``beam`` hypotheses,
    best first) in place; ``src_tokens`` (bsz, src_len) is the batch's source.  ``kind``: "hard" (a list
    of (source word, target word) index pairs) or "soft" (per target token, the source probabilities as
    6-decimal strings).  Raises ``ValueError`` for another ``kind``."""
    if kind not in EXTRACTORS:
        raise ValueError(f"--print-alignment {kind!r}: choose from {', '.join(EXTRACTORS)}")
    extract = EXTRACTORS[kind]
    hypos = [h for sentence in finalized for h in sentence]
    if not hypos:
        return
    tgt = data_utils.collate_tokens(
        [h["tokens"] for h in hypos], pad, eos, left_pad_target, move_eos_to_beginning=False
    ).cpu()
    src = src_tokens.cpu()
    i = 0
    for s, sentence in enumerate(finalized):
        for hypo in sentence:
            hypo["alignment"] = extract(hypo["attention"].transpose(1, 0).cpu(), src[s], tgt[i], pad, eos)
            i += 1
