"""The average attention network (AAN; Zhang et al., ACL 2018): a decoder without self-attention.

For the sub-layer input y_j at target position j (1-based) the average block computes

    ā_j = (1/j)·Σ_{k≤j} y_k                       cumulative average (no T×T matrix)
    g_j = FFN(ā_j)  with --aan-ffn, else ā_j
    [i_j; f_j] = W·[y_j; g_j] + b                 W: 2d×2d  (absent with --no-aan-gating)
    h̃_j = σ(i_j)⊙y_j + σ(f_j)⊙g_j               (h̃_j = g_j with --no-aan-gating)

and the decoder layer wraps h̃ in dropout, residual and layer norm like its other sub-layers
(post-norm: LN(y + h̃); pre-norm: y is the normalised input, so the average is over it).
Incremental decoding keeps, per layer, the running sum Σ y_k and the step count: O(1) per step.
"""

from typing import Optional, Tuple

import torch
from fairseq import utils
from fairseq.incremental_decoding_utils import with_incremental_state
from fairseq.modules import FairseqDropout
from torch import Tensor, nn

from .incremental_buffer import BatchFirstBuffer, State, xavier_linear
from .mdn_decoder_layer import MDNDecoderLayer


@with_incremental_state
class AverageAttention(BatchFirstBuffer, nn.Module):
    """The AAN block: cumulative average, optional FFN, optional gating (see the module docstring).

    Args:
        embed_dim: model width d.
        ffn_dim: inner width of the FFN applied to the average; 0 = no FFN (the default ``aan``).
        gating: build the gate ``W: 2d -> 2d`` (``gate.weight``, ``gate.bias``); without it there are
            no gate parameters and the block returns g.
        activation_fn, activation_dropout: of the FFN (as the decoder's own FFN).

    It takes the place of the decoder layer's ``self_attn`` and accepts its call (keys, values and
    masks are not needed: the average is causal by construction, and fairseq pads targets on the
    right, so a real position never averages over padding).
    """

    buffer_key = "avg_state"
    batch_keys = ("prev_sum",)

    num_heads = 1  # read by fairseq's layer constructor; the average has no heads

    def __init__(
        self,
        embed_dim: int,
        ffn_dim: int = 0,
        gating: bool = True,
        activation_fn: str = "relu",
        activation_dropout: float = 0.0,
    ):
        super().__init__()
        self.embed_dim = self.head_dim = embed_dim
        self.fc1 = xavier_linear(embed_dim, ffn_dim) if ffn_dim else None
        self.fc2 = xavier_linear(ffn_dim, embed_dim) if ffn_dim else None
        self.activation_fn = utils.get_activation_fn(activation_fn)
        self.activation_dropout_module = FairseqDropout(activation_dropout, module_name=type(self).__name__)
        self.gate = xavier_linear(2 * embed_dim, 2 * embed_dim) if gating else None

    def cumulative_average(self, x: Tensor, incremental_state: Optional[State] = None) -> Tensor:
        """ā for ``x`` (T × B × d): ``cumsum / (1..T)``; with ``incremental_state``, the T new positions
        continue the running sum and step count stored there (and the state is updated)."""
        sums = x.cumsum(dim=0)
        first = 1
        if incremental_state is not None:
            saved = self._get_input_buffer(incremental_state)
            if "prev_sum" in saved:
                sums = sums + saved["prev_sum"].unsqueeze(0)
                first += int(saved["prev_steps"].item())
            saved["prev_sum"] = sums[-1]
            saved["prev_steps"] = torch.tensor([first + x.size(0) - 1], dtype=torch.long)
            self._set_input_buffer(incremental_state, saved)
        steps = torch.arange(first, first + x.size(0), dtype=x.dtype, device=x.device)
        return sums / steps.view(-1, 1, 1)

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor] = None,
        value: Optional[Tensor] = None,
        key_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[State] = None,
        need_weights: bool = False,
        attn_mask: Optional[Tensor] = None,
        **unused,
    ) -> Tuple[Tensor, None]:
        """h̃ for the layer input ``query`` (y: T × B × d; in incremental decoding the new positions only).

        Returns ``(h̃: T × B × d, None)`` (no attention weights), like fairseq's attention modules.
        """
        g = self.cumulative_average(query, incremental_state)
        if self.fc1 is not None:
            g = self.fc2(self.activation_dropout_module(self.activation_fn(self.fc1(g))))
        if self.gate is None:
            return g, None
        i, f = self.gate(torch.cat([query, g], dim=-1)).chunk(2, dim=-1)
        return torch.sigmoid(i) * query + torch.sigmoid(f) * g, None

    def extra_repr(self):
        ffn = self.fc1.out_features if self.fc1 is not None else 0
        return f"embed_dim={self.embed_dim}, ffn_dim={ffn}, gating={self.gate is not None}"


class AANDecoderLayer(MDNDecoderLayer):
    """A decoder layer whose self-attention is the :class:`AverageAttention` block (``self_attn``);
    cross-attention, FFN and every MDN switch (narrow cross-attention head, ``--no-decoder-ffn``)
    are the MDN layer's, and so is its forward (the block accepts the attention call)."""

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        return AverageAttention(
            embed_dim,
            ffn_dim=cfg.decoder.ffn_embed_dim if getattr(cfg, "aan_ffn", False) else 0,
            gating=not getattr(cfg, "no_aan_gating", False),
            activation_fn=cfg.activation_fn,
            activation_dropout=float(cfg.activation_dropout or cfg.relu_dropout or 0),
        )
