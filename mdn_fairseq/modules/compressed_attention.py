"""The compressed attention network (CAN; Li et al., AAAI 2021): one sub-layer per decoder layer.

Self-attention, cross-attention and FFN are merged. For the sub-layer input x (T × B × d) and the
encoder output E (S × B × d_e), per head h (query/key width d_k = attention_dim / H, value width
d_v / H):

    q = W_q·x,   keys = [W_ek·E ; W_k·x],   values = [W_ev·E ; W_v·x]
    a_h = softmax(q·keysᵀ/√d_k + mask)·values     one softmax over the S + T keys; the mask hides
                                                   source padding and future target positions
    a = [a_1; …; a_H]                              (d_v wide; no separate output projection)
    u = ReLU(a + W_r·x + b_r),   out = W_o·u + b_o (d_v → d)

and the layer wraps ``out`` in one dropout, residual and layer norm (pre- or post-norm).
Incremental decoding projects the encoder keys/values once and appends one decoder key/value per step.
"""

from typing import Optional, Tuple

import torch
from fairseq import utils
from fairseq.incremental_decoding_utils import with_incremental_state
from fairseq.modules import FairseqDropout, LayerNorm
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import MDNError
from .incremental_buffer import BatchFirstBuffer, State, xavier_linear
from .mdn_decoder_layer import decoder_attention_dim


@with_incremental_state
class CompressedAttention(BatchFirstBuffer, nn.Module):
    """The CAN sub-layer (see the module docstring); parameters ``q_proj``, ``k_proj``/``v_proj``
    (decoder side), ``enc_k_proj``/``enc_v_proj`` (encoder side), ``r_proj`` (W_r) and ``out_proj`` (W_o).

    Raises:
        MDNError: ``attention_dim`` or ``value_dim`` not a positive multiple of ``num_heads``.
    """

    buffer_key = "can_state"

    def __init__(
        self,
        embed_dim: int,
        encoder_dim: int,
        num_heads: int,
        attention_dim: int,
        value_dim: int,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        for flag, dim in (("--decoder-attention-dim", attention_dim), ("--can-value-dim", value_dim)):
            if dim <= 0 or dim % num_heads:
                raise MDNError(f"{flag} ({dim}) must be a positive multiple of --decoder-attention-heads ({num_heads})")
        self.num_heads, self.head_dim, self.value_head_dim = (
            num_heads,
            attention_dim // num_heads,
            value_dim // num_heads,
        )
        self.scaling = self.head_dim**-0.5
        self.q_proj = xavier_linear(embed_dim, attention_dim)
        self.k_proj = xavier_linear(embed_dim, attention_dim)
        self.v_proj = xavier_linear(embed_dim, value_dim)
        self.enc_k_proj = xavier_linear(encoder_dim, attention_dim)
        self.enc_v_proj = xavier_linear(encoder_dim, value_dim)
        self.r_proj = xavier_linear(embed_dim, value_dim)
        self.out_proj = xavier_linear(value_dim, embed_dim)
        self.dropout_module = FairseqDropout(attention_dropout, module_name=type(self).__name__)

    def _heads(self, x: Tensor, head_dim: int) -> Tensor:
        """(L × B × H·h) -> (B × H × L × h)."""
        return x.view(x.size(0), x.size(1), self.num_heads, head_dim).permute(1, 2, 0, 3)

    def _keys_values(
        self,
        x: Tensor,
        encoder_out: Tensor,
        encoder_padding_mask: Optional[Tensor],
        key_padding_mask: Optional[Tensor],
        incremental_state: Optional[State],
    ):
        """Keys, values (B × H × (S+T') × ·), the key padding mask (B × (S+T'), True = hidden) and S,
        reading and extending the cache when decoding incrementally."""
        k, v = self._heads(self.k_proj(x), self.head_dim), self._heads(self.v_proj(x), self.value_head_dim)
        bsz, tgt_len = x.size(1), x.size(0)
        pad = key_padding_mask if key_padding_mask is not None else x.new_zeros(bsz, tgt_len, dtype=torch.bool)
        saved = self._get_input_buffer(incremental_state) if incremental_state is not None else {}
        if "enc_key" in saved:
            enc_k, enc_v, enc_pad = saved["enc_key"], saved["enc_value"], saved["enc_pad"]
        else:
            enc_k = self._heads(self.enc_k_proj(encoder_out), self.head_dim)
            enc_v = self._heads(self.enc_v_proj(encoder_out), self.value_head_dim)
            enc_pad = (
                encoder_padding_mask.bool()
                if encoder_padding_mask is not None
                else encoder_out.new_zeros(bsz, encoder_out.size(0), dtype=torch.bool)
            )
        if "prev_key" in saved:
            k = torch.cat([saved["prev_key"], k], dim=2)
            v = torch.cat([saved["prev_value"], v], dim=2)
            pad = torch.cat([saved["prev_pad"], pad.bool()], dim=1)
        if incremental_state is not None:
            saved.update(enc_key=enc_k, enc_value=enc_v, enc_pad=enc_pad, prev_key=k, prev_value=v, prev_pad=pad)
            self._set_input_buffer(incremental_state, saved)
        keys, values = torch.cat([enc_k, k], dim=2), torch.cat([enc_v, v], dim=2)
        return keys, values, torch.cat([enc_pad, pad.bool()], dim=1), enc_k.size(2)

    def forward(
        self,
        query: Tensor,
        encoder_out: Tensor,
        encoder_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[State] = None,
        attn_mask: Optional[Tensor] = None,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = False,
        need_head_weights: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """The sub-layer output ``out`` for ``query`` = x (T × B × d; the new positions only when decoding
        incrementally) and ``encoder_out`` = E (S × B × d_e).

        Args:
            encoder_padding_mask: B × S, True at source padding (zero weight there).
            attn_mask: T × T' additive causal mask over the decoder keys (fairseq's future mask), or None
                in incremental decoding, where the keys are exactly the positions so far.
            key_padding_mask: B × T, True at target padding (hidden as keys), or None.

        Returns:
            ``(out: T × B × d, weights)``: weights are the attention on the *source* positions,
            per head (H × B × T × S) with ``need_head_weights``, averaged over heads (B × T × S) with
            ``need_weights``, else None.
        """
        tgt_len, bsz, _ = query.size()
        q = self._heads(self.q_proj(query) * self.scaling, self.head_dim)
        k, v, pad, src_len = self._keys_values(
            query, encoder_out, encoder_padding_mask, key_padding_mask, incremental_state
        )
        scores = torch.matmul(q, k.transpose(2, 3))  # B × H × T × (S+T')
        if attn_mask is not None:
            scores = scores + F.pad(attn_mask, (src_len, 0))
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        weights = utils.softmax(scores, dim=-1).type_as(scores)
        a = torch.matmul(self.dropout_module(weights), v)  # B × H × T × d_v/H
        a = a.permute(2, 0, 1, 3).reshape(tgt_len, bsz, -1)
        out = self.out_proj(torch.relu(a + self.r_proj(query)))
        if not (need_weights or need_head_weights):
            return out, None
        source_weights = weights[..., :src_len].transpose(0, 1)  # H × B × T × S
        return out, source_weights if need_head_weights else source_weights.mean(dim=0)


class CANDecoderLayer(nn.Module):
    """A CAN decoder layer: one :class:`CompressedAttention` sub-layer (``compressed_attn``) with
    dropout, residual and ``layer_norm``; called like fairseq's decoder layer.

    Widths: query/key ``--decoder-attention-dim`` (default the model width) in
    ``--decoder-attention-heads`` heads, values ``--can-value-dim``.

    Raises:
        MDNError: built without cross-attention (CAN's sub-layer attends to the source).
    """

    def __init__(self, cfg, no_encoder_attn: bool = False):
        super().__init__()
        if no_encoder_attn:
            raise MDNError(
                "--no-cross-attention: a CAN decoder layer attends to the source inside its one "
                "sub-layer, it cannot be built without the encoder"
            )
        self.embed_dim = cfg.decoder.embed_dim
        self.normalize_before = cfg.decoder.normalize_before
        self.dropout_module = FairseqDropout(cfg.dropout, module_name=type(self).__name__)
        self.compressed_attn = CompressedAttention(
            self.embed_dim,
            cfg.encoder.embed_dim,
            cfg.decoder.attention_heads,
            decoder_attention_dim(cfg),
            cfg.can_value_dim,
            attention_dropout=cfg.attention_dropout,
        )
        self.layer_norm = LayerNorm(self.embed_dim, export=cfg.export)
        self.need_attn = True

    def forward(
        self,
        x: Tensor,
        encoder_out: Optional[Tensor] = None,
        encoder_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[State] = None,
        prev_self_attn_state=None,
        prev_attn_state=None,
        self_attn_mask: Optional[Tensor] = None,
        self_attn_padding_mask: Optional[Tensor] = None,
        need_attn: bool = False,
        need_head_weights: bool = False,
    ):
        """x: T × B × d -> ``(x, source attention or None, None)`` as fairseq's decoder layer.

        Raises:
            MDNError: no ``encoder_out``, or ``prev_*_state`` given (the state lives in ``incremental_state``).
        """
        if encoder_out is None:
            raise MDNError("a CAN decoder layer needs the encoder output (its keys include the source)")
        if prev_self_attn_state is not None or prev_attn_state is not None:
            raise MDNError("a CAN decoder layer takes its state from incremental_state only")
        residual = x
        if self.normalize_before:
            x = self.layer_norm(x)
        x, attn = self.compressed_attn(
            x,
            encoder_out,
            encoder_padding_mask,
            incremental_state,
            attn_mask=self_attn_mask,
            key_padding_mask=self_attn_padding_mask,
            need_weights=need_attn or (not self.training and self.need_attn),
            need_head_weights=need_head_weights,
        )
        x = residual + self.dropout_module(x)
        if not self.normalize_before:
            x = self.layer_norm(x)
        return x, attn, None

    def make_generation_fast_(self, need_attn: bool = False, **kwargs):
        self.need_attn = need_attn
