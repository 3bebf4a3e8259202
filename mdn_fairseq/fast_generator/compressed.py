"""CAN's decoder, one step at a time, on the lean search's buffers.

Each CAN decoder layer is one compressed sub-layer (:mod:`mdn_fairseq.modules.compressed_attention`): per
head one softmax over the encoder's keys and the decoder's keys so far.  :class:`CachedCompressedAttention`
computes it with the encoder keys/values projected once per sentence and shared by its beam (fairseq's
incremental state keeps a copy per hypothesis and reorders it every step) and the decoder keys/values in
preallocated buffers; :class:`CANSteps` is :class:`.steps.TransformerSteps` with CAN's layer loop.
The scores of the two key sets are computed apart and softmaxed together, so results equal fairseq's to
float rounding, as the rest of the packed route.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules.compressed_attention import CompressedAttention
from .attention import project_per_sentence
from .steps import DecoderState, Encoded, TransformerSteps


class CachedCompressedAttention(nn.Module):
    """The CAN sub-layer of one decoder layer (its :class:`CompressedAttention`), incrementally."""

    def __init__(self, attn: CompressedAttention):
        super().__init__()
        self.attn = attn

    def project(self, x: Tensor, keep: Optional[Tensor], bsz: int, src_len: int, padding_mask: Optional[Tensor]):
        """The encoder keys (bsz, H, d_k, src_len), values (bsz, H, src_len, d_v / H) and additive mask of
        one batch (see :func:`.attention.project_per_sentence`)."""
        a = self.attn
        return project_per_sentence(x, keep, bsz, src_len, padding_mask, (a.enc_k_proj, a.enc_v_proj), a.num_heads)

    def buffers(self, n: int, max_len: int, like: Tensor) -> List[Tensor]:
        """The decoder key (n, H, max_len + 1, d_k) and value (n, H, max_len + 1, d_v / H) buffers."""
        a = self.attn
        return [
            like.new_empty(n, a.num_heads, max_len + 1, a.head_dim),
            like.new_empty(n, a.num_heads, max_len + 1, a.value_head_dim),
        ]

    def forward(
        self, x: Tensor, step: int, cache: List[Tensor], enc: List[Optional[Tensor]], need_weights: bool = False
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """``CompressedAttention.forward`` for ``x`` (n, d) at ``step``, n = bsz * beam hypotheses
        (sentence-major); ``cache`` from :meth:`buffers` holding steps ``0..step-1`` (this step's are
        written), ``enc`` from :meth:`project`.  Returns the sub-layer output (n, d) and, with
        ``need_weights``, the weights on the source averaged over heads (n, src_len), as the decoder
        returns them for its alignment layer; else None."""
        a = self.attn
        n, heads, dk, dv = x.size(0), a.num_heads, a.head_dim, a.value_head_dim
        enc_k, enc_v, mask = enc
        bsz, src_len = enc_k.size(0), enc_k.size(3)
        k_buf, v_buf = cache[0], cache[1]
        q = a.q_proj(x) * a.scaling
        k_buf[:n, :, step] = a.k_proj(x).view(n, heads, dk)
        v_buf[:n, :, step] = a.v_proj(x).view(n, heads, dv)
        scores_enc = torch.matmul(q.view(bsz, n // bsz, heads, dk).transpose(1, 2), enc_k)  # bsz x H x beam x S
        if mask is not None:
            scores_enc = scores_enc + mask
        scores_dec = torch.matmul(q.view(n, heads, 1, dk), k_buf[:n, :, : step + 1].transpose(2, 3))
        scores = torch.cat([scores_enc.transpose(1, 2).reshape(n, heads, 1, src_len), scores_dec], dim=3)
        p_float = F.softmax(scores.float(), dim=-1)
        p = p_float.type_as(scores)
        p_enc = p[..., :src_len].reshape(bsz, n // bsz, heads, src_len).transpose(1, 2)
        out = torch.matmul(p_enc, enc_v).transpose(1, 2).reshape(n, heads, 1, dv)
        out = out + torch.matmul(p[..., src_len:], v_buf[:n, :, : step + 1])
        out = a.out_proj(torch.relu(out.reshape(n, heads * dv) + a.r_proj(x)))  # the sum keeps a transposed layout
        weights = None
        if need_weights:
            weights = p[..., :src_len]
            weights = (weights[:, 0] if heads == 1 else weights.mean(dim=1)).reshape(n, src_len)
        return out, weights


class CANSteps(TransformerSteps):
    """:class:`.steps.TransformerSteps` for a CAN decoder: one :class:`CachedCompressedAttention` per layer
    (in ``self_attns``; ``cross_attns`` is empty: the encoder keys are the compressed sub-layer's)."""

    @staticmethod
    def decoder_modules(decoder):
        """Per layer the compressed sub-layer's wrapper, and no separate cross-attention."""
        compressed = nn.ModuleList(CachedCompressedAttention(layer.compressed_attn) for layer in decoder.layers)
        return compressed, nn.ModuleList()

    def project(self, enc: Encoded) -> List[List[Optional[Tensor]]]:
        """Per layer the encoder keys, values and mask of its compressed sub-layer."""
        return [m.project(enc.x, enc.keep, enc.bsz, enc.src_len, enc.pad) for m in self.self_attns]

    def layers(self, x: Tensor, step: int, state: DecoderState) -> Tuple[Tensor, Optional[Tensor]]:
        """``CANDecoderLayer.forward`` of every layer: norm, the compressed sub-layer, residual."""
        attn = None
        for i, layer in enumerate(self.model.decoder.layers):
            residual = x
            if layer.normalize_before:
                x = layer.layer_norm(x)
            out, found = self.self_attns[i](
                x, step, state.self_kv[i], state.cross_kv[i], need_weights=i == self.alignment_layer
            )
            attn = found if found is not None else attn
            x = residual + out
            if not layer.normalize_before:
                x = layer.layer_norm(x)
        return x, attn
