"""Candidate ranking without the log-probability matrix: a per-row logsumexp and a block-wise top-k.

``log_softmax(x) = x - logsumexp(x)`` is a shift per row, so beam search can rank
``score + log_softmax(logits)`` as ``logits + (score - logsumexp)`` (:func:`logsumexp_rows`), and
find the top ``k`` of that sum over a sentence's ``beam x vocab`` entries from the few blocks whose
shifted maxima are highest (:func:`top_k_shifted`) instead of a full ``torch.topk``.
"""

import math

import torch
from torch import Tensor


def logsumexp_rows(x: Tensor, buf: Tensor) -> Tensor:
    """``torch.logsumexp(x, 1)`` (N x 1) using ``buf`` (x's shape) as scratch instead of new memory."""
    top = x.amax(dim=1, keepdim=True)
    top = top.masked_fill(~torch.isfinite(top), 0.0)
    torch.sub(x, top, out=buf).exp_()
    return buf.sum(dim=1, keepdim=True).log_().add_(top)


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
