"""Sharing attention across decoder layers (SAN; Xiao et al., IJCAI 2019).

The decoder's layers are cut into blocks of consecutive layers, separately for self- and cross-attention
(``--san-self-attn-blocks 2,4 --san-cross-attn-blocks 4,2``). In a self-attention block the first layer
computes softmax(QKᵀ/√d_k + mask) per head and the others apply those weights to their own values (they
have no Q/K projections). In a cross-attention block the others reuse the first layer's whole attention
output (they have no cross-attention of their own). The weights are handed from layer to layer by the
decoder's layer loop (:class:`mdn_fairseq.models.san.SANDecoder`), never kept on a module.
"""

from typing import List, Optional, Sequence

import torch
from fairseq.incremental_decoding_utils import with_incremental_state
from fairseq.modules import FairseqDropout
from torch import Tensor, nn

from ..errors import MDNError
from .incremental_buffer import BatchFirstBuffer, State
from .mdn_decoder_layer import MDNDecoderLayer, decoder_attention_dim

OWN, FIRST, SHARED = "own", "first", "shared"  # a layer's role in its block: alone, computes, reuses


def block_roles(blocks: Sequence[int]) -> List[str]:
    """Per-layer roles for block sizes, e.g. ``(2, 1) -> ["first", "shared", "own"]``."""
    return [role for size in blocks for role in ([OWN] if size == 1 else [FIRST] + [SHARED] * (size - 1))]


@with_incremental_state
class SharedWeightsAttention(BatchFirstBuffer, nn.Module):
    """Self-attention of a later layer of a SAN block: the block's weights applied to this layer's values.

    Parameters ``v_proj`` (model -> attention width) and ``out_proj`` (back), named as in fairseq's
    :class:`MultiheadAttention`; incremental decoding caches only the values.
    """

    buffer_key = "attn_state"
    batch_keys = ("prev_value",)

    self_attention = True

    def __init__(self, embed_dim: int, num_heads: int, attention_dim: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.head_dim, self.embed_dim = num_heads, attention_dim // num_heads, attention_dim
        self.v_proj = nn.Linear(embed_dim, attention_dim)
        self.out_proj = nn.Linear(attention_dim, embed_dim)
        self.dropout_module = FairseqDropout(dropout, module_name=type(self).__name__)
        nn.init.xavier_uniform_(self.v_proj.weight, gain=2**-0.5)  # as fairseq's attention initialises them
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def forward(self, x: Tensor, weights: Tensor, incremental_state: Optional[State] = None) -> Tensor:
        """``out_proj(dropout(weights)·v_proj(x))`` for x: T × B × d (new positions only when decoding
        incrementally) and the block's softmax weights: H × B × T × T' (T' = all positions so far)."""
        tgt_len, bsz, _ = x.size()
        v = self.v_proj(x).view(tgt_len, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        if incremental_state is not None:
            saved = self._get_input_buffer(incremental_state)
            if "prev_value" in saved:
                v = torch.cat([saved["prev_value"].view(bsz * self.num_heads, -1, self.head_dim), v], dim=1)
            saved["prev_value"] = v.view(bsz, self.num_heads, -1, self.head_dim)
            self._set_input_buffer(incremental_state, saved)
        probs = weights.transpose(0, 1).reshape(bsz * self.num_heads, tgt_len, -1).type_as(v)
        out = torch.bmm(self.dropout_module(probs), v)
        return self.out_proj(out.transpose(0, 1).reshape(tgt_len, bsz, self.embed_dim))


class SANDecoderLayer(MDNDecoderLayer):
    """An MDN decoder layer (narrow heads, optional FFN) with a role in a self- and a cross-attention block.

    ``self_role``: ``first`` computes the weights (fairseq's attention, per-head weights returned),
    ``shared`` applies them (:class:`SharedWeightsAttention`), ``own`` neither. ``cross_role``: ``first``
    hands its attention output on, ``shared`` has no ``encoder_attn`` (and, pre-norm, no
    ``encoder_attn_layer_norm``: its input would be unused) and adds the handed-on output.
    A layer with both roles ``own`` is an :class:`MDNDecoderLayer` instead (see the SAN decoder).
    """

    def __init__(self, cfg, no_encoder_attn: bool = False, self_role: str = OWN, cross_role: str = OWN):
        self.self_role, self.cross_role = self_role, cross_role  # read by the builders below
        super().__init__(cfg, no_encoder_attn)
        if cross_role == SHARED and self.normalize_before:
            self.encoder_attn_layer_norm = None

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        if self.self_role == SHARED:
            return SharedWeightsAttention(
                embed_dim, cfg.decoder.attention_heads, decoder_attention_dim(cfg), dropout=cfg.attention_dropout
            )
        attn = super().build_self_attention(embed_dim, cfg, add_bias_kv, add_zero_attn)
        if self.self_role == FIRST:
            attn._set_skip_embed_dim_check()  # fairseq's own path, which returns the weights of each head
        return attn

    def build_encoder_attention(self, embed_dim, cfg):
        return None if self.cross_role == SHARED else super().build_encoder_attention(embed_dim, cfg)

    def forward(
        self,
        x,
        encoder_out: Optional[Tensor] = None,
        encoder_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[State] = None,
        self_attn_mask: Optional[Tensor] = None,
        self_attn_padding_mask: Optional[Tensor] = None,
        need_attn: bool = False,
        need_head_weights: bool = False,
        self_weights: Optional[Tensor] = None,
        cross_out: Optional[Tensor] = None,
    ):
        """x: T × B × d -> ``(x, cross-attention weights or None, self_weights, cross_out)``.

        ``self_weights`` (H × B × T × T') and ``cross_out`` (T × B × d) come from the first layer of this
        layer's blocks (needed when the role is ``shared``); the returned ones are this layer's to hand on
        (None unless its role is ``first``). The arguments are fairseq's decoder layer's.

        Raises:
            MDNError: a ``shared`` role without the tensor to share.
        """
        residual = x
        if self.normalize_before:
            x = self.self_attn_layer_norm(x)
        if self.self_role == SHARED:
            if self_weights is None:
                raise MDNError("a SAN layer that shares self-attention weights was called without them")
            x, new_weights = self.self_attn(x, self_weights, incremental_state), None
        else:
            first = self.self_role == FIRST
            x, new_weights = self.self_attn(
                query=x,
                key=x,
                value=x,
                key_padding_mask=self_attn_padding_mask,
                incremental_state=incremental_state,
                need_weights=first,
                need_head_weights=first,
                attn_mask=self_attn_mask,
            )
        x = self.residual_connection(self.dropout_module(x), residual)
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)
        x, attn, new_cross = self._cross_attention(
            x, encoder_out, encoder_padding_mask, incremental_state, need_attn, need_head_weights, cross_out
        )
        if self.fc1 is not None:
            x = self._feed_forward(x)
        return x, attn, new_weights, new_cross

    def _cross_attention(
        self, x, encoder_out, encoder_padding_mask, incremental_state, need_attn, need_head_weights, cross_out
    ):
        if self.cross_role != SHARED and (self.encoder_attn is None or encoder_out is None):
            return x, None, None
        residual, attn = x, None
        if self.cross_role == SHARED:
            if cross_out is None:
                raise MDNError("a SAN layer that shares cross-attention was called without its output")
            out = cross_out
        else:
            query = self.encoder_attn_layer_norm(x) if self.normalize_before else x
            out, attn = self.encoder_attn(
                query=query,
                key=encoder_out,
                value=encoder_out,
                key_padding_mask=encoder_padding_mask,
                incremental_state=incremental_state,
                static_kv=True,
                need_weights=need_attn or (not self.training and self.need_attn),
                need_head_weights=need_head_weights,
            )
        x = self.residual_connection(self.dropout_module(out), residual)
        if not self.normalize_before:
            x = self.encoder_attn_layer_norm(x)
        return x, attn, out if self.cross_role == FIRST else None

    def _feed_forward(self, x):
        residual = x
        if self.normalize_before:
            x = self.final_layer_norm(x)
        x = self.fc2(self.activation_dropout_module(self.activation_fn(self.fc1(x))))
        x = self.residual_connection(self.dropout_module(x), residual)
        if not self.normalize_before:
            x = self.final_layer_norm(x)
        return x
