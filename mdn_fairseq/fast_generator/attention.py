"""fairseq ``MultiheadAttention`` layers re-run on the lean search's own buffers.

Each wrapper holds the model's attention module (its projections and scaling) and computes what that
module's ``forward`` computes in generation, with less bookkeeping:

* :class:`PackedSelfAttention`: encoder self-attention on the non-pad tokens only;
* :class:`CachedSelfAttention`: incremental decoder self-attention over preallocated K/V buffers;
* :class:`SharedCrossAttention`: encoder-decoder attention whose keys/values are projected once per
  sentence and shared by its beam; it also returns the attention weights averaged over heads, which
  fairseq returns as ``hypo["attention"]``.

Widths: C the model width, H heads of D dims each (``attn.num_heads``, ``attn.head_dim``).
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.modules import MultiheadAttention
from torch import Tensor, nn


class PackedSelfAttention(nn.Module):
    """Encoder self-attention of one fairseq ``MultiheadAttention`` on padding-free (packed) tokens."""

    def __init__(self, attn: MultiheadAttention):
        super().__init__()
        self.attn = attn

    def forward(
        self, x: Tensor, keep: Optional[Tensor], bsz: int, src_len: int, mask: Optional[Tensor], buf: Optional[Tensor]
    ) -> Tensor:
        """``x`` (tokens, C): the non-pad positions ``keep`` (flat indices into bsz*src_len; all if None)
        of a (bsz, src_len) batch; ``mask`` (bsz, 1, 1, src_len) bool, True where a key may be attended;
        ``buf`` a zero (3, bsz*src_len, H*D) scratch whose pad rows stay zero.  Returns (tokens, C)."""
        attn = self.attn
        heads, dim = attn.num_heads, attn.head_dim
        projections = (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x))
        if keep is not None:
            for i, p in enumerate(projections):
                buf[i].index_copy_(0, keep, p)
            projections = buf
        q, k, v = (p.view(bsz, src_len, heads, dim).transpose(1, 2) for p in projections)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)
        out = out.transpose(1, 2).reshape(bsz * src_len, heads * dim)
        if keep is not None:
            out = out.index_select(0, keep)
        return attn.out_proj(out)


class CachedSelfAttention(nn.Module):
    """Incremental self-attention of one fairseq ``MultiheadAttention`` over preallocated K/V buffers."""

    def __init__(self, attn: MultiheadAttention):
        super().__init__()
        self.attn = attn

    def forward(self, x: Tensor, step: int, cache: List[Tensor]) -> Tensor:
        """``x`` (n, C): the n hypotheses' states at ``step``; ``cache[0]``/``cache[1]``: key/value buffers
        (>= n, H, max_len + 1, D) holding steps ``0..step-1`` (this step's are written).  Returns (n, C)."""
        attn = self.attn
        n, heads, dim = x.size(0), attn.num_heads, attn.head_dim
        q = attn.q_proj(x)
        k_buf, v_buf = cache[0], cache[1]
        k_buf[:n, :, step] = attn.k_proj(x).view(n, heads, dim)
        v_buf[:n, :, step] = attn.v_proj(x).view(n, heads, dim)
        q *= attn.scaling
        w = torch.matmul(q.view(n, heads, 1, dim), k_buf[:n, :, : step + 1].transpose(2, 3))
        p = F.softmax(w.float(), dim=-1).type_as(w)
        out = torch.matmul(p, v_buf[:n, :, : step + 1])  # n x heads x 1 x dim
        return attn.out_proj(out.view(n, heads * dim))


class SharedCrossAttention(nn.Module):
    """Encoder-decoder attention with keys/values projected once per sentence, shared by its beam."""

    def __init__(self, attn: MultiheadAttention):
        super().__init__()
        self.attn = attn

    def project(self, x: Tensor, keep: Optional[Tensor], bsz: int, src_len: int, padding_mask: Optional[Tensor]):
        """From the encoder's packed output ``x`` (tokens, C_enc) (see :class:`PackedSelfAttention`):
        ``[keys (bsz, H, D, src_len), values (bsz, H, src_len, D), additive mask (bsz, 1, 1, src_len) or
        None]``, the mask -inf at the pads of ``padding_mask`` (bsz, src_len)."""
        attn = self.attn
        heads, dim = attn.num_heads, attn.head_dim
        k, v = attn.k_proj(x), attn.v_proj(x)
        if keep is not None:  # zeros at the pads: finite, and masked out below
            k = k.new_zeros(bsz * src_len, heads * dim).index_copy_(0, keep, k)
            v = v.new_zeros(bsz * src_len, heads * dim).index_copy_(0, keep, v)
        k, v = k.view(bsz, src_len, heads, dim), v.view(bsz, src_len, heads, dim)
        mask = None
        if padding_mask is not None:
            mask = torch.zeros(padding_mask.shape, dtype=k.dtype, device=k.device)
            mask = mask.masked_fill_(padding_mask, float("-inf")).view(bsz, 1, 1, src_len)
        return [k.permute(0, 2, 3, 1).contiguous(), v.permute(0, 2, 1, 3).contiguous(), mask]

    def forward(
        self, x: Tensor, kv: List[Optional[Tensor]], need_weights: bool = False
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """``x`` (n, C): n = bsz * beam hypotheses, sentence-major; ``kv`` from :meth:`project`.

        Returns the attention output (n, C) and, with ``need_weights``, the attention probabilities
        averaged over heads (n, src_len), as fairseq's decoder returns them for its alignment layer: the
        softmax in float32, cast to the model's dtype, averaged there (0 at the pads); else None.
        """
        attn = self.attn
        keys, values, mask = kv
        bsz, heads, dim = keys.size(0), attn.num_heads, attn.head_dim
        n = x.size(0)
        q = attn.q_proj(x)
        q *= attn.scaling
        q = q.view(bsz, n // bsz, heads, dim).transpose(1, 2)  # bsz x heads x beam x dim
        w = torch.matmul(q, keys)
        if mask is not None:
            w = w + mask
        p_float = F.softmax(w.float(), dim=-1)
        p = p_float.type_as(w)
        out = torch.matmul(p, values).transpose(1, 2).reshape(n, heads * dim)
        weights = None
        if need_weights:  # one head: its weights (the mean of one value is that value)
            weights = p_float.to(x.dtype)
            weights = (weights[:, 0] if heads == 1 else weights.mean(dim=1)).reshape(n, -1)
        return attn.out_proj(out), weights
