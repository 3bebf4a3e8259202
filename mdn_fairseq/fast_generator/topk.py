"""Candidate ranking without a full sort: a block-wise top-k over each sentence's beam x vocab.

Beam search ranks ``score + log_softmax(logits)`` over each sentence's ``beam x vocab`` entries; the top
``k`` lie within the ``k`` blocks (of about sqrt(vocab) entries) whose shifted maxima are highest, so
:func:`top_k_shifted` ranks only those instead of running ``torch.topk`` over everything.
"""

import math

import torch
from torch import Tensor


def _block_size(vocab: int) -> int:
    """A block width for :func:`top_k_shifted`: about sqrt(vocab), a divisor of it if one is near."""
    target = max(16, int(round(math.sqrt(vocab))))
    for width in sorted(range(max(8, target * 3 // 4), target * 3 // 2 + 1), key=lambda w: abs(w - target)):
        if vocab % width == 0:
            return width
    return target


def top_k_shifted(x: Tensor, offset: Tensor, k: int):
    """The top ``k`` of ``x + offset[..., None]`` over each sentence's ``R x V`` entries.

    ``x``: bsz x R x V (R beams, V the vocabulary), ``offset``: bsz x R.  Returns (values, flat
    indices into R x V), best first, as ``torch.topk`` on the flattened sum would.  Each row is
    cut into blocks; the top ``k`` entries lie within the ``k`` blocks with the highest shifted
    maxima, so only those (and the last partial block) are ranked.
    """
    bsz, rows, vocab = x.shape
    width = _block_size(vocab)
    blocks = vocab // width
    if blocks * rows <= 2 * k or blocks < 4:
        return torch.topk((x + offset.unsqueeze(2)).view(bsz, rows * vocab), k)
    full = x[:, :, : blocks * width].view(bsz, rows, blocks, width)
    best = (full.amax(dim=3) + offset.unsqueeze(2)).view(bsz, rows * blocks)
    kb = min(k, rows * blocks)
    chosen = torch.topk(best, kb).indices
    row, block = torch.div(chosen, blocks, rounding_mode="trunc"), chosen % blocks
    sentence = torch.arange(bsz, device=x.device).unsqueeze(1)
    values = full[sentence, row, block] + offset.gather(1, row).unsqueeze(2)  # bsz x kb x width
    index = (row * vocab + block * width).unsqueeze(2) + torch.arange(width, device=x.device)
    values, index = values.view(bsz, kb * width), index.view(bsz, kb * width)
    if blocks * width < vocab:  # the last, partial block of every row is always ranked
        tail = x[:, :, blocks * width :] + offset.unsqueeze(2)
        tail_index = (
            (
                torch.arange(rows, device=x.device).unsqueeze(1) * vocab
                + torch.arange(blocks * width, vocab, device=x.device)
            )
            .view(1, -1)
            .expand(bsz, -1)
        )
        values = torch.cat([values, tail.reshape(bsz, -1)], dim=1)
        index = torch.cat([index, tail_index], dim=1)
    top, pos = torch.topk(values, k)
    return top, index.gather(1, pos)
