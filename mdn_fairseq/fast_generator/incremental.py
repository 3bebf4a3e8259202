"""The model's own encoder and incremental decoder, one step at a time, behind the lean search's interface.

:class:`IncrementalSteps` calls ``encoder.forward_torchscript``, ``decoder.forward`` with incremental state,
``reorder_encoder_out`` and ``reorder_incremental_state_scripting`` exactly as fairseq's
``SequenceGenerator`` (``EnsembleModel``) calls them, so its logits and attention are fairseq's to the
bit, in any precision.  The lean search uses it for half-precision models (see :mod:`.search`), where
the packed and shared computations of :class:`.steps.TransformerSteps` round differently from fairseq's,
and for the peers' decoders that the packed route does not replicate (see :mod:`.support`).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn


@dataclass
class IncrementalState:
    """fairseq's encoder output (one copy per hypothesis row) and the decoder's incremental state."""

    encoder_out: Dict[str, List[Tensor]]
    incremental: Dict[str, Dict[str, Optional[Tensor]]]
    bsz: int
    src_len: int


class IncrementalSteps(nn.Module):
    """The steps of :class:`.steps.TransformerSteps` through the model's own forward (any
    ``FairseqIncrementalDecoder`` whose output is ``(logits, {"attn": [attention]})``)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        # no lean modules: the attention is the model's own (read by mdn_fairseq.bench's profiler)
        self.self_attns, self.cross_attns, self.enc_attns = nn.ModuleList(), nn.ModuleList(), None
        self.encoder_fallback_reason = "the model's own forward"

    def start(self, net_input, beam: int, max_len: int, position_token: int) -> IncrementalState:
        """Encode ``net_input`` and repeat the encoder output for ``beam`` hypotheses per sentence."""
        encoder = self.model.encoder
        out = encoder.forward_torchscript(net_input)
        bsz = net_input["src_tokens"].size(0)
        order = torch.arange(bsz, device=net_input["src_tokens"].device).repeat_interleave(beam)
        out = encoder.reorder_encoder_out(out, order)
        return IncrementalState(out, {}, bsz, out["encoder_out"][0].size(0))

    def step(self, prefix: Tensor, step: int, state: IncrementalState) -> Tuple[Tensor, Optional[Tensor]]:
        """Logits (n, V) in the model's dtype and the decoder's attention (n, src_len) in float32 (None if
        the decoder returns none) for the n hypotheses ``prefix`` (n, step + 1)."""
        logits, extra = self.model.decoder.forward(
            prefix, encoder_out=state.encoder_out, incremental_state=state.incremental
        )
        attn = extra.get("attn") if isinstance(extra, dict) else None
        attn = attn[0] if isinstance(attn, list) else attn
        return logits[:, -1, :], (attn[:, -1, :].float() if attn is not None else None)

    def reorder(self, state: IncrementalState, order: Tensor, n_old: int, step: int) -> None:
        """Keep hypothesis rows ``order`` (indices into the current rows, as SequenceGenerator's reorder)."""
        self.model.decoder.reorder_incremental_state_scripting(state.incremental, order)
        state.encoder_out = self.model.encoder.reorder_encoder_out(state.encoder_out, order)

    def drop_sentences(self, state: IncrementalState, keep: Tensor) -> None:
        """Nothing: :meth:`reorder`'s rows already leave out the finished sentences."""
