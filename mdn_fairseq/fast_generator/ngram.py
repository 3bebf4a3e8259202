"""``--no-repeat-ngram-size N``: no hypothesis repeats an n-gram of N tokens.

fairseq blocks n-grams with a CUDA kernel (``fairseq.ngram_repeat_block_cuda``) or, without it, with a
Python fallback, ``NGramRepeatBlock._no_repeat_ngram``.  In fairseq 0.12 that fallback compares the
last ``N - 1`` entries of the *whole* token buffer (``tokens[-(N-1):]``, always padding, since
``SequenceGenerator`` passes its ``(bsz * beam, max_len + 2)`` buffer) with the generated prefixes,
so it never matches and blocks nothing: every CPU run (and any GPU without the compiled extension)
ignores the option.

:func:`ban_repeated_ngrams` is the kernel's rule, vectorised: at ``step``, for each hypothesis
``tokens[0..step]`` (``tokens[0]`` the start symbol), every earlier window ``tokens[i : i + N - 1]``
that equals the last ``N - 1`` tokens ``tokens[step - N + 2 : step + 1]`` bans ``tokens[i + N - 1]``.
The lean search calls it; :class:`NGramBlocker` puts it into fairseq's own generator
(:func:`install_ngram_blocker`), so that ``--no-fast-generator`` and the hand-overs block too.
"""

import math

import torch
from fairseq.ngram_repeat_block import NGramRepeatBlock
from torch import Tensor


def ban_repeated_ngrams(tokens: Tensor, lprobs: Tensor, step: int, n: int) -> Tensor:
    """Set ``lprobs[r, t] = -inf`` for every token ``t`` that would repeat an n-gram of row ``r``.

    ``tokens`` (rows, >= step + 1) long: each hypothesis so far, ``tokens[:, 0]`` the start symbol and
    ``tokens[:, 1..step]`` the generated tokens; ``lprobs`` (rows, V) float scores of the next token
    (log-probabilities or logits: only -inf is written), edited in place and returned.  ``n`` >= 1.
    No host synchronisation: the bans are a ``scatter_add_`` of 0 or -inf.
    """
    windows = step + 2 - n  # earlier n-grams whose first n - 1 tokens can equal the last n - 1
    if windows <= 0:
        return lprobs
    hist = tokens[:, : step + 1]
    if n == 1:
        match = torch.ones_like(hist, dtype=torch.bool)
    else:
        prefixes = hist.unfold(1, n - 1, 1)[:, :windows]  # rows x windows x (n - 1)
        match = (prefixes == hist[:, windows:].unsqueeze(1)).all(dim=2)
    banned = hist[:, n - 1 : n - 1 + windows]  # the token that followed each window
    penalty = torch.zeros(match.shape, dtype=lprobs.dtype, device=lprobs.device).masked_fill_(match, -math.inf)
    return lprobs.scatter_add_(1, banned, penalty)


def repeated_ngrams(tokens, n: int):
    """The n-grams (tuples) that occur more than once in the token list ``tokens`` (for checks and tests)."""
    seen, repeated = set(), set()
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i : i + n])
        (repeated if gram in seen else seen).add(gram)
    return repeated


class NGramBlocker(NGramRepeatBlock):
    """fairseq's ``NGramRepeatBlock`` with a working CPU path (:func:`ban_repeated_ngrams`); the CUDA
    extension, where fairseq built one, still runs for CUDA tensors."""

    def forward(self, tokens, lprobs, bsz: int, beam_size: int, step: int):
        """As ``NGramRepeatBlock.forward``: ``tokens`` (bsz * beam, >= step + 1), ``lprobs`` (bsz * beam, V)
        float32, edited in place and returned."""
        if self.use_extension and lprobs.is_cuda:
            return self.call_cuda_extension(tokens, lprobs, bsz, beam_size, step)
        return ban_repeated_ngrams(tokens, lprobs, step, self.no_repeat_ngram_size)


def install_ngram_blocker(generator):
    """Give fairseq's ``generator`` (a ``SequenceGenerator``) an :class:`NGramBlocker` in place of its
    ``repeat_ngram_blocker``, if it blocks n-grams at all; other generators are returned unchanged."""
    blocker = getattr(generator, "repeat_ngram_blocker", None)
    if blocker is not None and not isinstance(blocker, NGramBlocker):
        generator.repeat_ngram_blocker = NGramBlocker(blocker.no_repeat_ngram_size, use_extension=blocker.use_extension)
    return generator
