"""The model side of the lean beam search: a fairseq Transformer encoder-decoder, one step at a time.

:class:`TransformerSteps` runs ``TransformerEncoderBase.forward`` (on the non-pad tokens only) and
``TransformerDecoderBase.forward`` with incremental state, as fairseq's ``SequenceGenerator`` calls
them, on buffers it owns: for fairseq's Transformer and MDN layers, and for the peers' layers that keep
that layout -- AAN (the average block in place of self-attention) and SAN (attention weights and outputs
handed on within blocks of layers, as ``SANDecoder``'s layer loop does).  :class:`.compressed.CANSteps`
does the same for CAN's one-sub-layer decoder.  The search (:mod:`.search`) sees four methods: ``start``
(encode a batch, make the state), ``step`` (logits and attention of the next token), ``reorder`` (keep
some hypotheses) and ``drop_sentences``; :class:`.incremental.IncrementalSteps` is the same interface
over the model's own forward, and another decoder family plugs in as another class with these four methods.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules.average_attention import AverageAttention
from ..modules.shared_attention import FIRST, SHARED, SharedWeightsAttention
from .attention import (
    CachedAverage,
    CachedSelfAttention,
    CachedSharedWeights,
    PackedSelfAttention,
    ReusedCrossAttention,
    SharedCrossAttention,
)
from .linear import linear_relu
from .support import encoder_unsupported_reason


@dataclass
class Encoded:
    """The encoder output as packed non-pad tokens ``x`` (tokens, C), their flat positions ``keep`` in the
    (bsz, src_len) batch (None: no padding), the (bsz, src_len) padding mask ``pad`` (None: no padding)."""

    x: Tensor
    keep: Optional[Tensor]
    pad: Optional[Tensor]
    bsz: int
    src_len: int


@dataclass
class DecoderState:
    """Per-batch decoder buffers: position embeddings per step (max_len + 1, C) or None, per layer the
    buffers of its self-attention (``buffers()`` of the wrapper: K and V (n, H, max_len + 1, D), AAN's sum
    (n, C) ...) followed by as many spares to reorder into, and per layer the per-sentence cross-attention
    keys, values, mask (see :func:`.attention.project_per_sentence`); ``bsz`` sentences, ``src_len``
    source positions (the width of the attention the decoder returns)."""

    positions: Optional[Tensor]
    self_kv: List[List[Tensor]]
    cross_kv: List[List[Optional[Tensor]]]
    bsz: int
    src_len: int


def self_attention_step(layer) -> nn.Module:
    """The lean wrapper of a decoder layer's self-attention: fairseq's attention, AAN's average block, or
    SAN's shared weights (a SAN block's first layer hands its weights on)."""
    if isinstance(layer.self_attn, AverageAttention):
        return CachedAverage(layer.self_attn)
    if isinstance(layer.self_attn, SharedWeightsAttention):
        return CachedSharedWeights(layer.self_attn)
    return CachedSelfAttention(layer.self_attn, hand_on=getattr(layer, "self_role", None) == FIRST)


# bytes of FFN hidden activation per block of rows: the encoder's feed-forward sub-layer runs on blocks of
# rows so that the hidden activation (rows x FFN dim) stays in cache between its two products instead of
# going to memory and back.  Measured on a 2-core AMD EPYC (1 MiB L2 per core, 32 MiB L3), 22 layers of a
# 512 -> 2048 -> 512 FFN on 1600 packed tokens (oneDNN, packed weights, 2 threads): all rows at once 371 ms
# (398 GFLOP/s), blocks of 128 / 256 / 512 / 1024 rows 313 / 303 / 316 / 339 ms; 256 x 2048 floats = 2 MiB.
FFN_BLOCK_BYTES = 2 * 1024 * 1024


def feed_forward_by_rows(layer, x: Tensor) -> Tensor:
    """A fairseq encoder layer's feed-forward sub-layer with its residual and layer norm (pre-norm:
    ``x + fc2(act(fc1(LN(x))))``; post-norm: ``LN(x + fc2(act(fc1(x))))``) on ``x`` (tokens, C), computed
    in blocks of rows (:data:`FFN_BLOCK_BYTES` of hidden activation each; the rows are independent, so
    the result is the one of all rows at once).  Returns a new (tokens, C) tensor."""
    pre, relu = layer.normalize_before, layer.activation_fn is F.relu
    rows = max(1, FFN_BLOCK_BYTES // (x.element_size() * layer.fc1.out_features))
    out = torch.empty_like(x)
    for start in range(0, x.size(0), rows):
        residual = x[start : start + rows]
        h = layer.final_layer_norm(residual) if pre else residual
        h = linear_relu(layer.fc1, h) if relu else layer.activation_fn(layer.fc1(h))
        y = torch.add(residual, layer.fc2(h), out=out[start : start + rows])
        if not pre:
            out[start : start + rows] = layer.final_layer_norm(y)
    return out


class TransformerSteps(nn.Module):
    """Encoder pass and incremental decoder steps of one fairseq Transformer(-like) model (see
    :func:`.support.packed_unsupported_reason` for which); ``enc_attns`` is None where the lean encoder
    pass does not apply (:func:`.support.encoder_unsupported_reason`) and the encoder's own forward runs."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.self_attns, self.cross_attns = self.decoder_modules(model.decoder)
        self.encoder_fallback_reason = encoder_unsupported_reason(model)
        self.enc_attns = None
        if self.encoder_fallback_reason is None:
            self.enc_attns = nn.ModuleList(PackedSelfAttention(layer.self_attn) for layer in model.encoder.layers)
        # fairseq's decoder returns the cross-attention of its last layer (alignment_layer=None)
        self.alignment_layer = len(model.decoder.layers) - 1

    @staticmethod
    def decoder_modules(decoder):
        """The lean wrappers of the decoder layers' attention: per layer a module with ``buffers`` (the
        self-attention's) and one with ``project`` (the cross-attention's, per sentence)."""
        self_attns = nn.ModuleList(self_attention_step(layer) for layer in decoder.layers)
        cross_attns = nn.ModuleList(
            ReusedCrossAttention()
            if getattr(layer, "cross_role", None) == SHARED
            else SharedCrossAttention(layer.encoder_attn)
            for layer in decoder.layers
        )
        return self_attns, cross_attns

    def encode(self, net_input) -> Encoded:
        """The encoder output for ``net_input["src_tokens"]`` (bsz, src_len); without a lean pass for this
        encoder (``enc_attns`` None), the encoder's own forward, packed."""
        src_tokens = net_input["src_tokens"]
        bsz, src_len = src_tokens.shape[:2]
        if self.enc_attns is None:
            out = self.model.encoder.forward_torchscript(net_input)
            enc = out["encoder_out"][0].transpose(0, 1)
            pad = out["encoder_padding_mask"][0] if len(out["encoder_padding_mask"]) else None
            pad = pad if pad is not None and bool(pad.any()) else None
            keep = None if pad is None else (~pad).view(-1).nonzero().squeeze(1)
            x = enc.reshape(bsz * enc.size(1), -1)
            return Encoded(x if keep is None else x.index_select(0, keep), keep, pad, bsz, enc.size(1))
        pad = src_tokens.eq(self.model.encoder.padding_idx)
        pad = pad if bool(pad.any()) else None
        x, keep = self._packed_encoder(src_tokens, pad)
        return Encoded(x, keep, pad, bsz, src_len)

    def _packed_encoder(self, src_tokens: Tensor, pad: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """``TransformerEncoderBase.forward`` on the non-pad tokens only: (tokens, C) and ``keep``."""
        encoder = self.model.encoder
        bsz, src_len = src_tokens.shape
        x = encoder.embed_scale * encoder.embed_tokens(src_tokens)
        if encoder.embed_positions is not None:
            x = x + encoder.embed_positions(src_tokens)
        if encoder.layernorm_embedding is not None:
            x = encoder.layernorm_embedding(x)
        if encoder.quant_noise is not None:
            x = encoder.quant_noise(x)
        x = x.view(bsz * src_len, -1)
        keep = mask = buf = None
        if pad is not None:
            keep = (~pad).view(-1).nonzero().squeeze(1)
            x = x.index_select(0, keep)
            mask = (~pad).view(bsz, 1, 1, src_len)
        for layer, attn in zip(encoder.layers, self.enc_attns):
            pre = layer.normalize_before
            residual = x
            if pre:
                x = layer.self_attn_layer_norm(x)
            if pad is not None and (buf is None or buf.size(1) != 3 * attn.attn.embed_dim):
                buf = x.new_zeros(bsz * src_len, 3 * attn.attn.embed_dim)
            x = residual + attn(x, keep, bsz, src_len, mask, buf)
            if not pre:
                x = layer.self_attn_layer_norm(x)
            x = feed_forward_by_rows(layer, x)
        if encoder.layer_norm is not None:
            x = encoder.layer_norm(x)
        return x, keep

    def start(self, net_input, beam: int, max_len: int, position_token: int) -> DecoderState:
        """Encode ``net_input`` (fairseq's, ``src_tokens`` (bsz, src_len)) and make the buffers for decoding
        its sentences with ``beam`` hypotheses each, up to ``max_len + 1`` steps; ``position_token``: a
        non-pad token (the positions of a row of them are the decoder's positions per step)."""
        enc = self.encode(net_input)
        dec = self.model.decoder
        device = enc.x.device
        cross_kv = self.project(enc)
        positions = None
        if dec.embed_positions is not None:
            steps = torch.full((1, max_len + 1), position_token, dtype=torch.long, device=device)
            positions = dec.embed_positions(steps)[0]  # the position of step t, as in incremental decoding
        n = enc.bsz * beam
        self_kv = []
        for wrapper in self.self_attns:
            buffers = wrapper.buffers(n, max_len, enc.x)
            self_kv.append(buffers + [torch.empty_like(b) for b in buffers])
        return DecoderState(positions, self_kv, cross_kv, enc.bsz, enc.src_len)

    def project(self, enc: Encoded) -> List[List[Optional[Tensor]]]:
        """Per layer the cross-attention keys, values and mask of the encoder output ``enc``, per sentence
        (see :func:`.attention.project_per_sentence`; ``[]`` for a layer that reuses another's)."""
        return [cross.project(enc.x, enc.keep, enc.bsz, enc.src_len, enc.pad) for cross in self.cross_attns]

    def _embed(self, tokens: Tensor, step: int, positions: Optional[Tensor]) -> Tensor:
        dec = self.model.decoder
        x = dec.embed_scale * dec.embed_tokens(tokens)
        if dec.quant_noise is not None:
            x = dec.quant_noise(x)
        if dec.project_in_dim is not None:
            x = dec.project_in_dim(x)
        if positions is not None:
            x += positions[step]
        if dec.layernorm_embedding is not None:
            x = dec.layernorm_embedding(x)
        return x

    def step(self, prefix: Tensor, step: int, state: DecoderState) -> Tuple[Tensor, Optional[Tensor]]:
        """The next-token logits (n, V), unnormalised, in the model's dtype, for the n hypotheses ``prefix``
        (n, step + 1) (the start symbol and the tokens so far), and the alignment layer's cross-attention
        (n, src_len) in float32 (None where that layer has none of its own: a SAN layer that reuses it)."""
        dec = self.model.decoder
        x, attn = self.layers(self._embed(prefix[:, step], step, state.positions), step, state)
        if dec.layer_norm is not None:
            x = dec.layer_norm(x)
        if dec.project_out_dim is not None:
            x = dec.project_out_dim(x)
        return dec.output_projection(x), (attn.float() if attn is not None else None)

    def layers(self, x: Tensor, step: int, state: DecoderState) -> Tuple[Tensor, Optional[Tensor]]:
        """The decoder layers on ``x`` (n, C) at ``step``: (n, C) and the alignment layer's attention or None.
        The last self-attention weights handed on (SAN) and the last cross-attention output go to the
        layers that share them."""
        attn = weights = cross_out = None
        for i, layer in enumerate(self.model.decoder.layers):
            pre = layer.normalize_before
            residual = x
            if pre:
                x = layer.self_attn_layer_norm(x)
            out, handed = self.self_attns[i](x, step, state.self_kv[i], weights)
            weights = handed if handed is not None else weights
            x = residual + out
            if not pre:
                x = layer.self_attn_layer_norm(x)
            residual = x
            cross = self.cross_attns[i]
            if not isinstance(cross, ReusedCrossAttention):
                if pre:
                    x = layer.encoder_attn_layer_norm(x)
                cross_out, found = cross(x, state.cross_kv[i], need_weights=i == self.alignment_layer)
                attn = found if found is not None else attn
            x = residual + cross_out
            if not pre:
                x = layer.encoder_attn_layer_norm(x)
            if layer.fc1 is not None:
                residual = x
                if pre:
                    x = layer.final_layer_norm(x)
                x = residual + layer.fc2(layer.activation_fn(layer.fc1(x)))
                if not pre:
                    x = layer.final_layer_norm(x)
        return x, attn

    def reorder(self, state: DecoderState, order: Tensor, n_old: int, step: int) -> None:
        """Keep hypothesis rows ``order`` (n_new,) of the n_old rows, for the self-attention buffers of
        steps ``0..step``; the cross-attention keys are per sentence (see :meth:`drop_sentences`)."""
        n = order.numel()
        for buffers in state.self_kv:
            half = len(buffers) // 2
            for j in range(half):
                src, dst = buffers[j], buffers[half + j]
                if src.dim() == 4:  # n x H x steps x D: only the steps so far
                    torch.index_select(src[:n_old, :, : step + 1], 0, order, out=dst[:n, :, : step + 1])
                else:
                    torch.index_select(src[:n_old], 0, order, out=dst[:n])
                buffers[j], buffers[half + j] = dst, src

    def drop_sentences(self, state: DecoderState, keep: Tensor) -> None:
        """Keep sentences ``keep`` (indices into the current batch) in the per-sentence cross-attention keys."""
        state.cross_kv = [[t.index_select(0, keep) if t is not None else None for t in kv] for kv in state.cross_kv]
