"""The live hypotheses of the lean beam search and how they grow, move and finish.

:class:`Beams` holds, for the n = bsz * beam hypotheses still searched (sentence-major; the rows of
finished sentences leave), what ``SequenceGenerator`` keeps in its ``tokens``/``scores``/``attn``
buffers, and does its bookkeeping: continue the chosen hypotheses (:meth:`Beams.advance`) and store
those that end (:meth:`Beams.finalize`, ``SequenceGenerator.finalize_hypos``).

The attention is not reordered every step as fairseq reorders its ``attn`` buffer: step t's rows are
stored as they come (``attn[t]``) with, per hypothesis, the row it descends from at every step
(``origin``, reordered like the tokens), and a finished hypothesis gathers its columns once.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import Tensor


@dataclass
class Beams:
    """``tokens`` (n, max_len + 2) long: the start symbol, the tokens so far, pad; ``scores`` (n, max_len + 1)
    float32: cumulative log-probability (nats) after each step; ``attn`` (max_len + 1, n0, src_len) float32:
    ``attn[t, :n_t]`` the cross-attention of step t's rows; ``origin`` (n, max_len + 1) long: the row at step
    t that each row descends from; ``sent_ids``: the original index of each remaining sentence;
    ``scratch`` (n0, V): reusable scratch for the candidate ranking."""

    tokens: Tensor
    scores: Tensor
    attn: Optional[Tensor]
    origin: Tensor
    sent_ids: List[int]
    scratch: Optional[Tensor] = None

    @classmethod
    def start(cls, bsz: int, beam: int, max_len: int, src_len: int, start_token: int, pad: int, device) -> "Beams":
        """``beam`` empty hypotheses for each of ``bsz`` sentences, up to ``max_len`` tokens and EOS."""
        n = bsz * beam
        tokens = torch.full((n, max_len + 2), pad, dtype=torch.long, device=device)
        tokens[:, 0] = start_token
        scores = torch.zeros(n, max_len + 1, dtype=torch.float, device=device)
        attn = torch.empty(max_len + 1, n, src_len, dtype=torch.float, device=device)
        origin = torch.empty(n, max_len + 1, dtype=torch.long, device=device)
        origin[:, 0] = torch.arange(n, device=device)
        return cls(tokens, scores, attn, origin, list(range(bsz)))

    def record(self, step: int, attn: Optional[Tensor]) -> None:
        """Keep step ``step``'s cross-attention (n, src_len) of the current rows (None: the decoder returns
        no attention, and hypotheses carry an empty one, as fairseq's)."""
        if attn is None:
            self.attn = None
        elif self.attn is not None:
            self.attn[step, : attn.size(0)] = attn

    def drop_sentences(self, keep: List[int]) -> None:
        """Only sentences ``keep`` (indices into the current batch) go on; their rows are selected by the
        next :meth:`advance`, whose ``rows`` still count the rows before the removal."""
        self.sent_ids = [self.sent_ids[i] for i in keep]

    def advance(self, step: int, rows: Tensor, next_tokens: Tensor, next_scores: Tensor, pad: int) -> None:
        """Continue hypotheses ``rows`` (indices into the current rows) with ``next_tokens`` and cumulative
        ``next_scores`` (each (n_new,)) as step ``step``'s token and score."""
        n = rows.numel()
        tokens = self.tokens.new_full((n, self.tokens.size(1)), pad)
        torch.index_select(self.tokens[:, : step + 1], 0, rows, out=tokens[:, : step + 1])
        tokens[:, step + 1] = next_tokens
        scores = self.scores.new_zeros(n, self.scores.size(1))
        if step > 0:
            torch.index_select(self.scores[:, :step], 0, rows, out=scores[:, :step])
        scores[:, step] = next_scores
        origin = self.origin.new_empty(n, self.origin.size(1))
        torch.index_select(self.origin[:, : step + 1], 0, rows, out=origin[:, : step + 1])
        origin[:, step + 1] = torch.arange(n, device=origin.device)
        self.tokens, self.scores, self.origin = tokens, scores, origin

    def finalize(
        self,
        step: int,
        bbsz_idx: Tensor,
        eos_scores: Tensor,
        finalized: List[List[Dict[str, Tensor]]],
        beam: int,
        eos: int,
        len_penalty: Optional[float],
        max_len: int,
    ) -> List[int]:
        """``SequenceGenerator.finalize_hypos``: store the hypotheses of rows ``bbsz_idx`` that end with EOS
        at ``step`` with cumulative scores ``eos_scores`` (normalised by ``(step + 1) ** len_penalty`` unless
        ``len_penalty`` is None) in ``finalized`` (per original sentence, up to ``beam``); return the indices
        (in the current batch) of the sentences that now have ``beam`` hypotheses (or hit max_len)."""
        hyp_tokens = self.tokens.index_select(0, bbsz_idx)[:, 1 : step + 2]
        hyp_tokens[:, step] = eos
        steps = torch.arange(step + 1, device=bbsz_idx.device)
        hyp_attn = None
        if self.attn is not None:
            hyp_attn = self.attn[steps, self.origin[bbsz_idx, : step + 1]].transpose(1, 2)  # k x src_len x tgt_len
        pos_scores = self.scores.index_select(0, bbsz_idx)[:, : step + 1]
        pos_scores[:, step] = eos_scores
        pos_scores[:, 1:] = pos_scores[:, 1:] - pos_scores[:, :-1]
        if len_penalty is not None:
            eos_scores = eos_scores / (step + 1) ** len_penalty
        rows = torch.div(bbsz_idx, beam, rounding_mode="trunc").tolist()
        for i, row in enumerate(rows):
            hypos = finalized[self.sent_ids[row]]
            if len(hypos) < beam:
                hypos.append(
                    {
                        "tokens": hyp_tokens[i],
                        "score": eos_scores[i],
                        "attention": hyp_attn[i] if hyp_attn is not None else torch.empty(0),
                        "alignment": torch.empty(0),
                        "positional_scores": pos_scores[i],
                    }
                )
        return [row for row in sorted(set(rows)) if len(finalized[self.sent_ids[row]]) == beam or step == max_len]
