"""Attention layers of the decoder re-run on the lean search's own buffers.

Each wrapper holds the model's module (its projections and scaling) and computes what that module's
``forward`` computes in generation, with less bookkeeping:

* :class:`PackedSelfAttention`: encoder self-attention on the non-pad tokens only;
* :class:`CachedSelfAttention`: incremental decoder self-attention over preallocated K/V buffers
  (for SAN's first layer of a block it also hands its weights on);
* :class:`CachedAverage`: AAN's average block over a running sum;
* :class:`CachedSharedWeights`: a later layer of a SAN self-attention block, the block's weights applied
  to its own cached values;
* :class:`SharedCrossAttention`: encoder-decoder attention whose keys/values are projected once per
  sentence and shared by its beam; it also returns the attention weights averaged over heads, which
  fairseq returns as ``hypo["attention"]``; :class:`ReusedCrossAttention`: a later layer of a SAN
  cross-attention block, which reuses the block's output.

The decoder-side wrappers share one interface with the search's model runner (:mod:`.steps`):
``buffers(n, max_len, like)`` makes the per-hypothesis buffers of one layer (rows first: the runner
reorders them), ``forward(x, step, buffers, weights)`` returns ``(output, weights to hand on or None)``.

Widths: C the model width, H heads of D dims each (``attn.num_heads``, ``attn.head_dim``).
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.modules import MultiheadAttention
from torch import Tensor, nn

from ..modules.average_attention import AverageAttention
from ..modules.shared_attention import SharedWeightsAttention
from .linear import linear, on_onednn, onednn_takes, packed_weights


class PackedSelfAttention(nn.Module):
    """Encoder self-attention of one fairseq ``MultiheadAttention`` on padding-free (packed) tokens, with
    its three input projections as one matrix product where they are plain ``nn.Linear`` layers (q, k, v
    weights stacked per batch: one (tokens, C) x (C, 3·H·D) product instead of three narrower ones; inside
    :func:`~.linear.onednn_linears` with a packed-weight cache, the stacked weight's packed copy from it)."""

    def __init__(self, attn: MultiheadAttention):
        super().__init__()
        self.attn = attn

    def stacked_projection(self) -> Tuple[Tensor, Optional[Tensor]]:
        """The q, k, v weights (3·H·D, C) and biases (3·H·D,) (None without biases), stacked in that order;
        made from the module's parameters at each call, so they never go stale."""
        a = self.attn
        weight = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        biases = [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]
        return weight, (None if any(b is None for b in biases) else torch.cat(biases))

    def forward(
        self, x: Tensor, keep: Optional[Tensor], bsz: int, src_len: int, mask: Optional[Tensor], buf: Optional[Tensor]
    ) -> Tensor:
        """``x`` (tokens, C): the non-pad positions ``keep`` (flat indices into bsz*src_len; all if None)
        of a (bsz, src_len) batch; ``mask`` (bsz, 1, 1, src_len) bool, True where a key may be attended;
        ``buf`` a zero (bsz*src_len, 3·H·D) scratch whose pad rows stay zero.  Returns (tokens, C)."""
        attn = self.attn
        heads, dim = attn.num_heads, attn.head_dim
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        cache = packed_weights(attn.q_proj)  # inside onednn_linears with a PackedWeights cache
        plain = all(type(p) is nn.Linear for p in projections)
        if plain and cache is not None and onednn_takes(x, attn.q_proj.weight, 3 * heads * dim):
            packed = cache.get(*(p.weight for p in projections))  # stacked and packed once: no torch.cat per call
            biases = [p.bias for p in projections]
            bias = None if any(b is None for b in biases) else torch.cat(biases)
            qkv = linear(x, packed, bias)
        elif plain:
            qkv = linear(x, *self.stacked_projection(), onednn=on_onednn(attn.q_proj))
        else:  # e.g. int8 dynamic-quantized layers: their own forward each
            qkv = torch.cat([p(x) for p in projections], dim=-1)
        if keep is not None:
            qkv = buf.index_copy_(0, keep, qkv)
        q, k, v = qkv.view(bsz, src_len, 3, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)
        out = out.transpose(1, 2).reshape(bsz * src_len, heads * dim)
        if keep is not None:
            out = out.index_select(0, keep)
        return attn.out_proj(out)


class CachedSelfAttention(nn.Module):
    """Incremental self-attention of one fairseq ``MultiheadAttention`` over preallocated K/V buffers;
    ``hand_on``: also return its weights (SAN: the first layer of a self-attention block)."""

    def __init__(self, attn: MultiheadAttention, hand_on: bool = False):
        super().__init__()
        self.attn = attn
        self.hand_on = hand_on

    def buffers(self, n: int, max_len: int, like: Tensor) -> List[Tensor]:
        """Key and value buffers (n, H, max_len + 1, D), ``like``'s dtype and device."""
        a = self.attn
        return [like.new_empty(n, a.num_heads, max_len + 1, a.head_dim) for _ in range(2)]

    def forward(
        self, x: Tensor, step: int, cache: List[Tensor], weights: Optional[Tensor] = None
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """``x`` (n, C): the n hypotheses' states at ``step``; ``cache`` from :meth:`buffers` holding steps
        ``0..step-1`` (this step's are written).  Returns (n, C) and, with ``hand_on``, the softmax weights
        (n, H, 1, step + 1) in float32, as fairseq's attention returns them per head; else None."""
        attn = self.attn
        n, heads, dim = x.size(0), attn.num_heads, attn.head_dim
        q = attn.q_proj(x)
        k_buf, v_buf = cache[0], cache[1]
        k_buf[:n, :, step] = attn.k_proj(x).view(n, heads, dim)
        v_buf[:n, :, step] = attn.v_proj(x).view(n, heads, dim)
        q *= attn.scaling
        w = torch.matmul(q.view(n, heads, 1, dim), k_buf[:n, :, : step + 1].transpose(2, 3))
        p_float = F.softmax(w.float(), dim=-1)
        out = torch.matmul(p_float.type_as(w), v_buf[:n, :, : step + 1])  # n x heads x 1 x dim
        return attn.out_proj(out.view(n, heads * dim)), p_float if self.hand_on else None


class CachedAverage(nn.Module):
    """AAN's average block (:class:`~mdn_fairseq.modules.average_attention.AverageAttention`) over a
    running sum: ā = sum / (step + 1), the optional FFN, the optional gates, as its ``forward`` computes
    them; reordering the beam touches only the sum."""

    def __init__(self, attn: AverageAttention):
        super().__init__()
        self.attn = attn

    def buffers(self, n: int, max_len: int, like: Tensor) -> List[Tensor]:
        """The running sum (n, C)."""
        return [like.new_empty(n, self.attn.embed_dim)]

    def forward(
        self, x: Tensor, step: int, cache: List[Tensor], weights: Optional[Tensor] = None
    ) -> Tuple[Tensor, None]:
        """h̃ (n, C) for the layer input ``x`` (n, C) at ``step`` (0-based); ``cache[0]`` holds the sum of the
        earlier steps' inputs and is updated.  Returns ``(h̃, None)``."""
        attn = self.attn
        total = cache[0][: x.size(0)]
        if step == 0:
            total.copy_(x)
        else:
            total.add_(x)
        g = total / x.new_full((1, 1), step + 1)  # as AverageAttention divides (a tensor of the step count)
        if attn.fc1 is not None:
            g = attn.fc2(attn.activation_dropout_module(attn.activation_fn(attn.fc1(g))))
        if attn.gate is None:
            return g, None
        i, f = attn.gate(torch.cat([x, g], dim=-1)).chunk(2, dim=-1)
        return torch.sigmoid(i) * x + torch.sigmoid(f) * g, None


class CachedSharedWeights(nn.Module):
    """A later layer of a SAN self-attention block
    (:class:`~mdn_fairseq.modules.shared_attention.SharedWeightsAttention`): the weights of the block's
    first layer applied to this layer's own values, cached per step."""

    def __init__(self, attn: SharedWeightsAttention):
        super().__init__()
        self.attn = attn

    def buffers(self, n: int, max_len: int, like: Tensor) -> List[Tensor]:
        """The value buffer (n, H, max_len + 1, D)."""
        a = self.attn
        return [like.new_empty(n, a.num_heads, max_len + 1, a.head_dim)]

    def forward(self, x: Tensor, step: int, cache: List[Tensor], weights: Optional[Tensor]) -> Tuple[Tensor, None]:
        """``x`` (n, C) at ``step``; ``weights`` (n, H, 1, step + 1): the block's first layer's (see
        :class:`CachedSelfAttention`).  Returns ``(output (n, C), None)``."""
        attn = self.attn
        n, heads, dim = x.size(0), attn.num_heads, attn.head_dim
        v_buf = cache[0]
        v_buf[:n, :, step] = attn.v_proj(x).view(n, heads, dim)
        out = torch.matmul(weights.type_as(v_buf), v_buf[:n, :, : step + 1])
        return attn.out_proj(out.view(n, heads * dim)), None


def project_per_sentence(
    x: Tensor,
    keep: Optional[Tensor],
    bsz: int,
    src_len: int,
    padding_mask: Optional[Tensor],
    projections: Tuple[nn.Module, nn.Module],
    heads: int,
) -> List[Optional[Tensor]]:
    """Keys and values of the encoder's packed output ``x`` (tokens, C_enc) (see :class:`PackedSelfAttention`)
    through ``projections`` (key, value; each to ``heads`` heads): ``[keys (bsz, H, Dk, src_len), values
    (bsz, H, src_len, Dv), additive mask (bsz, 1, 1, src_len) or None]``, the mask -inf at the pads of
    ``padding_mask`` (bsz, src_len)."""
    k, v = projections[0](x), projections[1](x)
    if keep is not None:  # zeros at the pads: finite, and masked out below
        k = k.new_zeros(bsz * src_len, k.size(1)).index_copy_(0, keep, k)
        v = v.new_zeros(bsz * src_len, v.size(1)).index_copy_(0, keep, v)
    k, v = k.view(bsz, src_len, heads, -1), v.view(bsz, src_len, heads, -1)
    mask = None
    if padding_mask is not None:
        mask = torch.zeros(padding_mask.shape, dtype=k.dtype, device=k.device)
        mask = mask.masked_fill_(padding_mask, float("-inf")).view(bsz, 1, 1, src_len)
    return [k.permute(0, 2, 3, 1).contiguous(), v.permute(0, 2, 1, 3).contiguous(), mask]


class SharedCrossAttention(nn.Module):
    """Encoder-decoder attention with keys/values projected once per sentence, shared by its beam."""

    def __init__(self, attn: MultiheadAttention):
        super().__init__()
        self.attn = attn

    def project(self, x: Tensor, keep: Optional[Tensor], bsz: int, src_len: int, padding_mask: Optional[Tensor]):
        """The keys, values and mask of one batch (see :func:`project_per_sentence`)."""
        attn = self.attn
        return project_per_sentence(x, keep, bsz, src_len, padding_mask, (attn.k_proj, attn.v_proj), attn.num_heads)

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


class ReusedCrossAttention(nn.Module):
    """A later layer of a SAN cross-attention block: no attention of its own, it adds the output of the
    block's first layer (the search's layer loop hands it on); nothing to project."""

    def project(self, x: Tensor, keep: Optional[Tensor], bsz: int, src_len: int, padding_mask: Optional[Tensor]):
        """Nothing: ``[]``."""
        return []
