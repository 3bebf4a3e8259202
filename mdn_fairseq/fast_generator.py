"""A lean beam search for MDN-like models: fairseq's ``SequenceGenerator``, same output, less work.

With a one-layer, one-head decoder the decoder itself costs little; what is left is the deep
encoder and the per-step bookkeeping.  :class:`FastSequenceGenerator` runs fairseq's beam search
(``search.BeamSearch`` with ``SequenceGenerator``'s finalisation rules) on the model's own
modules, but

* runs the encoder on the non-pad tokens only (attention on the padded batch, masked as fairseq
  masks it), with in-place activations;
* projects the encoder output to cross-attention keys/values once per sentence and shares them
  across the beam (fairseq repeats the encoder output ``beam`` times and projects every copy);
* keeps self-attention keys/values in preallocated buffers, reordered in one ``index_select``
  per step (no per-step ``torch.cat``, no incremental-state dictionaries, no encoder-out reorder);
* never forms the log-probability matrix: ``log_softmax(x) = x - logsumexp(x)`` is a per-row
  shift, so the beam candidates come from the logits (masked as fairseq masks them) shifted by
  ``score - logsumexp``, ranked block-wise (:func:`top_k_shifted`) instead of by a full top-k;
* skips the attention weights that fairseq collects for ``--print-alignment``
  (hypotheses carry an empty ``attention``).

Hypotheses, scores and positional scores equal ``SequenceGenerator``'s with the same settings
(scores to float rounding, ~1e-6).  Whatever it does not do -- sampling and the other search
strategies, constraints, prefix tokens, ensembles, ``--print-alignment``, LM fusion, n-gram
blocking, ``--match-source-len``, decoders that are not fairseq Transformer decoders, a model in
training mode -- is handed to fairseq's ``SequenceGenerator``: :func:`unsupported_reason` says
why, :meth:`FastSequenceGenerator.generate` falls back for prefix tokens and constraints at call
time.  An encoder the lean pass does not cover (:func:`encoder_unsupported_reason`) runs its own
``forward``.
"""

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairseq.models.fairseq_decoder import FairseqDecoder
from fairseq.models.fairseq_encoder import FairseqEncoder
from fairseq.models.fairseq_model import BaseFairseqModel
from fairseq.models.transformer import TransformerDecoderBase, TransformerEncoderBase, TransformerModelBase
from fairseq.modules import MultiheadAttention
from fairseq.modules.fairseq_dropout import FairseqDropout
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

from .modules import MDNDecoderLayer

# generation options (fairseq's GenerationConfig names) the lean search does not implement, with
# the value at which they are off
_OFF_OPTIONS = {
    "sampling": False,
    "diverse_beam_groups": -1,
    "match_source_len": False,
    "diversity_rate": -1,
    "constraints": None,
    "prefix_allowed_tokens_fn": None,
    "print_alignment": None,
    "no_repeat_ngram_size": 0,
    "score_reference": False,
}
_LAYER_FORWARDS = (TransformerDecoderLayerBase.forward, MDNDecoderLayer.forward)


def _is_off(value, off) -> bool:
    if off is None or off is False:
        return not value
    return value is None or value <= off


def _inherits(obj, name: str, *owners) -> bool:
    """``obj``'s method ``name`` is one of ``owners``' (not overridden in a subclass)."""
    return getattr(type(obj), name, None) in tuple(getattr(owner, name) for owner in owners)


def _attention_unsupported_reason(attn, where: str) -> Optional[str]:
    if not isinstance(attn, MultiheadAttention) or not _inherits(attn, "forward", MultiheadAttention):
        return f"{where} ({type(attn).__name__}) has its own forward"
    if attn.bias_k is not None or attn.add_zero_attn:
        return f"{where} uses bias_kv/zero_attn"
    if getattr(attn, "rotary_pos_embed", None) is not None:
        return f"{where} uses rotary embeddings"
    return None


def decoder_unsupported_reason(model) -> Optional[str]:
    """Why the lean search cannot decode ``model`` exactly as fairseq would, or None."""
    decoder = getattr(model, "decoder", None)
    if getattr(model, "encoder", None) is None or not isinstance(decoder, TransformerDecoderBase):
        return f"{type(model).__name__} is not an encoder-decoder with a fairseq Transformer decoder"
    for owner, name, allowed in (
        (model, "get_normalized_probs", (BaseFairseqModel, TransformerModelBase)),
        (model, "get_normalized_probs_scriptable", (BaseFairseqModel,)),
        (decoder, "forward", (TransformerDecoderBase,)),
        (decoder, "extract_features", (TransformerDecoderBase,)),
        (decoder, "extract_features_scriptable", (TransformerDecoderBase,)),
        (decoder, "output_layer", (TransformerDecoderBase,)),
        (decoder, "get_normalized_probs", (FairseqDecoder,)),
        (decoder, "get_normalized_probs_scriptable", (FairseqDecoder,)),
    ):
        if not _inherits(owner, name, *allowed):
            return f"{type(owner).__name__}.{name} is overridden"
    if decoder.adaptive_softmax is not None:
        return "adaptive softmax"
    if decoder.cross_self_attention:
        return "--cross-self-attention"
    if any(isinstance(m, FairseqDropout) and m.apply_during_inference and m.p > 0 for m in decoder.modules()):
        return "dropout at inference (--retain-dropout)"
    for i, layer in enumerate(decoder.layers):
        if not isinstance(layer, TransformerDecoderLayerBase) or type(layer).forward not in _LAYER_FORWARDS:
            return f"decoder layer {i} ({type(layer).__name__}) has its own forward"
        if not _inherits(layer, "residual_connection", TransformerDecoderLayerBase):
            return f"decoder layer {i} has its own residual connection"
        if layer.encoder_attn is None:
            return f"decoder layer {i} has no encoder attention"
        if any(getattr(layer, a, None) is not None for a in ("attn_ln", "c_attn", "ffn_layernorm", "w_resid")):
            return f"decoder layer {i} uses --scale-attn/--scale-heads/--scale-fc/--scale-resids"
        if (layer.fc1 is None) != (layer.fc2 is None):
            return f"decoder layer {i} has half an FFN"
        for attn, kind in ((layer.self_attn, "self"), (layer.encoder_attn, "encoder")):
            reason = _attention_unsupported_reason(attn, f"decoder layer {i} {kind} attention")
            if reason is not None:
                return reason
        if not layer.self_attn.self_attention or not layer.encoder_attn.encoder_decoder_attention:
            return f"decoder layer {i} attention is not self- then encoder-decoder attention"
    return None


def encoder_unsupported_reason(model) -> Optional[str]:
    """Why the lean (padding-free) encoder pass cannot stand in for ``model.encoder``, or None.

    Only speed is at stake: an unsupported encoder is run by its own ``forward``.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, TransformerEncoderBase):
        return f"{type(encoder).__name__} is not a fairseq Transformer encoder"
    for name, owner in (("forward", TransformerEncoderBase), ("forward_scriptable", TransformerEncoderBase),
                        ("forward_embedding", TransformerEncoderBase), ("forward_torchscript", FairseqEncoder)):
        if not _inherits(encoder, name, owner):
            return f"{type(encoder).__name__}.{name} is overridden"
    if any(isinstance(m, FairseqDropout) and m.apply_during_inference and m.p > 0 for m in encoder.modules()):
        return "dropout at inference (--retain-dropout)"
    for i, layer in enumerate(encoder.layers):
        if not isinstance(layer, TransformerEncoderLayerBase) or not _inherits(layer, "forward", TransformerEncoderLayerBase):
            return f"encoder layer {i} ({type(layer).__name__}) has its own forward"
        if not _inherits(layer, "residual_connection", TransformerEncoderLayerBase) or layer.return_fc:
            return f"encoder layer {i} has its own residual connection or returns its FFN output"
        reason = _attention_unsupported_reason(layer.self_attn, f"encoder layer {i} attention")
        if reason is not None or not layer.self_attn.self_attention:
            return reason or f"encoder layer {i} attention is not self-attention"
    return None


def unsupported_reason(models, args=None, extra_gen_cls_kwargs=None, prefix_allowed_tokens_fn=None) -> Optional[str]:
    """Why ``task.build_generator(models, args, ...)`` must be fairseq's generator, or None.

    ``args`` is fairseq's generation config (``cfg.generation`` or a namespace); prefix tokens and
    constraints arrive per batch and are handled by :meth:`FastSequenceGenerator.generate`.
    """
    if len(models) != 1:
        return f"an ensemble of {len(models)} models"
    for name, off in _OFF_OPTIONS.items():
        value = prefix_allowed_tokens_fn if name == "prefix_allowed_tokens_fn" else getattr(args, name, off)
        if not _is_off(value, off):
            return f"--{name.replace('_', '-')}"
    extra = {k: v for k, v in (extra_gen_cls_kwargs or {}).items() if v is not None and k != "lm_weight"}
    if extra:
        return f"extra generator options {sorted(extra)}"
    return decoder_unsupported_reason(models[0])


def logsumexp_rows(x: Tensor, buf: Tensor) -> Tensor:
    """``torch.logsumexp(x, 1)`` (N x 1) using ``buf`` (x's shape) as scratch instead of new memory."""
    top = x.amax(dim=1, keepdim=True)
    top = top.masked_fill(~torch.isfinite(top), 0.0)
    torch.sub(x, top, out=buf).exp_()
    return buf.sum(dim=1, keepdim=True).log_().add_(top)


def _block_size(vocab: int) -> int:
    """A block width for :func:`top_k_shifted`: about sqrt(vocab), a divisor of it if one is near."""
    target = max(16, int(round(math.sqrt(vocab))))
    for width in sorted(range(max(8, target * 3 // 4), target * 3 // 2 + 1), key=lambda w: abs(w - target)):
        if vocab % width == 0:
            return width
    return target


def top_k_shifted(x: Tensor, offset: Tensor, k: int):
    """The top ``k`` of ``x + offset[..., None]`` over each sentence's ``R x V`` entries.

    ``x``: bsz x R x V (R beams, V the vocabulary), ``offset``: bsz x R.  Returns (values, flat
    indices into R x V), best first, as ``torch.topk`` on the flattened sum would.  Each row is
    cut into blocks; the top ``k`` entries lie within the ``k`` blocks with the highest shifted
    maxima, so only those (and the last partial block) are ranked.
    """
    bsz, rows, vocab = x.shape
    width = _block_size(vocab)
    blocks = vocab // width
    if blocks * rows <= 2 * k or blocks < 4:
        return torch.topk((x + offset.unsqueeze(2)).view(bsz, rows * vocab), k)
    full = x[:, :, : blocks * width].view(bsz, rows, blocks, width)
    best = (full.amax(dim=3) + offset.unsqueeze(2)).view(bsz, rows * blocks)
    kb = min(k, rows * blocks)
    chosen = torch.topk(best, kb).indices
    row, block = torch.div(chosen, blocks, rounding_mode="trunc"), chosen % blocks
    sentence = torch.arange(bsz, device=x.device).unsqueeze(1)
    values = full[sentence, row, block] + offset.gather(1, row).unsqueeze(2)  # bsz x kb x width
    index = (row * vocab + block * width).unsqueeze(2) + torch.arange(width, device=x.device)
    values, index = values.view(bsz, kb * width), index.view(bsz, kb * width)
    if blocks * width < vocab:  # the last, partial block of every row is always ranked
        tail = x[:, :, blocks * width :] + offset.unsqueeze(2)
        tail_index = (torch.arange(rows, device=x.device).unsqueeze(1) * vocab
                      + torch.arange(blocks * width, vocab, device=x.device)).view(1, -1).expand(bsz, -1)
        values = torch.cat([values, tail.reshape(bsz, -1)], dim=1)
        index = torch.cat([index, tail_index], dim=1)
    top, pos = torch.topk(values, k)
    return top, index.gather(1, pos)


class _PackedSelfAttention(nn.Module):
    """Encoder self-attention of one fairseq ``MultiheadAttention`` on padding-free (packed) tokens."""

    def __init__(self, attn: MultiheadAttention):
        super().__init__()
        self.attn = attn

    def forward(self, x: Tensor, keep: Optional[Tensor], bsz: int, src_len: int, mask: Optional[Tensor],
                buf: Optional[Tensor]) -> Tensor:
        """``x``: tokens x C, the non-pad positions ``keep`` of a bsz x src_len batch (all if None);
        ``buf``: a zero 3 x bsz*src_len x C scratch whose pad rows stay zero."""
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


class _CachedSelfAttention(nn.Module):
    """Incremental self-attention of one fairseq ``MultiheadAttention`` over preallocated K/V buffers."""

    def __init__(self, attn: MultiheadAttention):
        super().__init__()
        self.attn = attn

    def forward(self, x: Tensor, step: int, cache: List[Tensor]) -> Tensor:
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


class _SharedCrossAttention(nn.Module):
    """Encoder-decoder attention with keys/values projected once per sentence, shared by its beam."""

    def __init__(self, attn: MultiheadAttention):
        super().__init__()
        self.attn = attn

    def project(self, x: Tensor, keep: Optional[Tensor], bsz: int, src_len: int, padding_mask: Optional[Tensor]):
        """From the encoder's packed output (see :class:`_PackedSelfAttention`): keys
        (bsz x heads x dim x src), values (bsz x heads x src x dim) and an additive mask (or None)."""
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

    def forward(self, x: Tensor, kv: List[Optional[Tensor]]) -> Tensor:
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
        p = F.softmax(w.float(), dim=-1).type_as(w)
        out = torch.matmul(p, values).transpose(1, 2).reshape(n, heads * dim)
        return attn.out_proj(out)


class FastSequenceGenerator(nn.Module):
    """Beam search with fairseq ``SequenceGenerator``'s results for one fairseq Transformer(-like) model.

    Takes ``SequenceGenerator``'s arguments; those it does not implement must be off (see
    :func:`unsupported_reason`).  ``fallback`` (a ``SequenceGenerator`` with the same settings,
    built on demand) handles prefix tokens and constraints.
    """

    def __init__(
        self,
        models,
        tgt_dict,
        beam_size=1,
        max_len_a=0,
        max_len_b=200,
        max_len=0,
        min_len=1,
        normalize_scores=True,
        len_penalty=1.0,
        unk_penalty=0.0,
        temperature=1.0,
        eos=None,
        symbols_to_strip_from_output=None,
        search_strategy=None,
        **fallback_kwargs,
    ):
        super().__init__()
        reason = unsupported_reason(models, extra_gen_cls_kwargs=fallback_kwargs) or (
            None if search_strategy is None or type(search_strategy).__name__ == "BeamSearch"
            else f"search strategy {type(search_strategy).__name__}"
        )
        if reason is not None:
            raise ValueError(f"FastSequenceGenerator cannot decode this: {reason}; use fairseq's SequenceGenerator")
        if temperature <= 0:
            raise ValueError(f"--temperature must be greater than 0; got {temperature}")
        self.model = models[0]
        decoder = self.model.decoder
        self.self_attns = nn.ModuleList(_CachedSelfAttention(layer.self_attn) for layer in decoder.layers)
        self.cross_attns = nn.ModuleList(_SharedCrossAttention(layer.encoder_attn) for layer in decoder.layers)
        self.encoder_fallback_reason = encoder_unsupported_reason(self.model)
        self.enc_attns = None
        if self.encoder_fallback_reason is None:
            self.enc_attns = nn.ModuleList(_PackedSelfAttention(layer.self_attn) for layer in self.model.encoder.layers)
        self.tgt_dict = tgt_dict
        self.pad, self.unk = tgt_dict.pad(), tgt_dict.unk()
        self.eos = tgt_dict.eos() if eos is None else eos
        self.symbols_to_strip_from_output = (
            symbols_to_strip_from_output.union({self.eos}) if symbols_to_strip_from_output is not None else {self.eos}
        )
        self.vocab_size = len(tgt_dict)
        self.beam_size = min(beam_size, self.vocab_size - 1)  # pad is never chosen
        self.max_len_a, self.max_len_b, self.min_len = max_len_a, max_len_b, min_len
        self.max_len = max_len or self.model.max_decoder_positions()
        self.normalize_scores, self.len_penalty = normalize_scores, len_penalty
        self.unk_penalty, self.temperature = unk_penalty, temperature
        self._fallback_kwargs = dict(
            beam_size=beam_size, max_len_a=max_len_a, max_len_b=max_len_b, max_len=max_len, min_len=min_len,
            normalize_scores=normalize_scores, len_penalty=len_penalty, unk_penalty=unk_penalty,
            temperature=temperature, eos=eos, symbols_to_strip_from_output=symbols_to_strip_from_output,
            search_strategy=search_strategy, **fallback_kwargs,
        )
        self._fallback = None
        self.model.eval()

    @classmethod
    def from_args(cls, models, tgt_dict, args, **kwargs):
        """Built from fairseq's generation config as ``FairseqTask.build_generator`` builds its generator."""
        return cls(
            models,
            tgt_dict,
            beam_size=getattr(args, "beam", 5),
            max_len_a=getattr(args, "max_len_a", 0),
            max_len_b=getattr(args, "max_len_b", 200),
            min_len=getattr(args, "min_len", 1),
            normalize_scores=not getattr(args, "unnormalized", False),
            len_penalty=getattr(args, "lenpen", 1),
            unk_penalty=getattr(args, "unkpen", 0),
            temperature=getattr(args, "temperature", 1.0),
            **kwargs,
        )

    @property
    def fallback(self):
        """fairseq's ``SequenceGenerator`` with this generator's settings."""
        if self._fallback is None:
            from fairseq.sequence_generator import SequenceGenerator

            self._fallback = SequenceGenerator([self.model], self.tgt_dict, **self._fallback_kwargs)
        return self._fallback

    def cuda(self):
        self.model.cuda()
        return self

    @torch.no_grad()
    def forward(self, sample, prefix_tokens=None, bos_token=None):
        return self.generate([self.model], sample, prefix_tokens=prefix_tokens, bos_token=bos_token)

    def generate(self, models, sample: Dict[str, Dict[str, Tensor]], prefix_tokens=None, constraints=None,
                 bos_token=None) -> List[List[Dict[str, Tensor]]]:
        """Translate a batch, as ``SequenceGenerator.generate``."""
        if (prefix_tokens is not None or constraints is not None or "src_tokens" not in sample["net_input"]
                or self.model.training):  # training mode: dropout, which only fairseq's path applies
            return self.fallback.generate(models, sample, prefix_tokens=prefix_tokens, constraints=constraints,
                                          bos_token=bos_token)
        # no_grad as fairseq, not inference_mode: callers edit the results in place (fairseq-generate
        # divides positional scores), and modules may cache tensors made here (positional tables)
        with torch.no_grad():
            return self._generate(sample, bos_token)

    # -----------------------------------------------------------------------------------------

    def _encode(self, net_input):
        """The encoder output as packed non-pad tokens: (tokens x C, their flat positions in the
        bsz x src_len batch or None if there is no padding, the bsz x src_len padding mask or None)."""
        encoder = self.model.encoder
        src_tokens = net_input["src_tokens"]
        if self.enc_attns is None:  # the encoder's own forward, then packed
            out = encoder.forward_torchscript(net_input)
            enc = out["encoder_out"][0].transpose(0, 1)
            bsz, src_len = enc.shape[:2]
            pad = out["encoder_padding_mask"][0] if len(out["encoder_padding_mask"]) else None
            pad = pad if pad is not None and bool(pad.any()) else None
            keep = None if pad is None else (~pad).view(-1).nonzero().squeeze(1)
            x = enc.reshape(bsz * src_len, -1)
            return (x if keep is None else x.index_select(0, keep)), keep, pad
        # TransformerEncoderBase.forward on the non-pad tokens only
        bsz, src_len = src_tokens.shape
        pad = src_tokens.eq(encoder.padding_idx)
        pad = pad if bool(pad.any()) else None
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
            buf = x.new_zeros(3, bsz * src_len, encoder.layers[0].self_attn.embed_dim) if len(encoder.layers) else None
        for layer, attn in zip(encoder.layers, self.enc_attns):
            pre = layer.normalize_before
            residual = x
            if pre:
                x = layer.self_attn_layer_norm(x)
            if buf is not None and buf.size(2) != attn.attn.embed_dim:
                buf = x.new_zeros(3, bsz * src_len, attn.attn.embed_dim)
            x = residual + attn(x, keep, bsz, src_len, mask, buf)
            if not pre:
                x = layer.self_attn_layer_norm(x)
            residual = x
            if pre:
                x = layer.final_layer_norm(x)
            h = layer.fc1(x)
            h = torch.relu_(h) if layer.activation_fn is F.relu else layer.activation_fn(h)
            x = residual + layer.fc2(h)
            if not pre:
                x = layer.final_layer_norm(x)
        if encoder.layer_norm is not None:
            x = encoder.layer_norm(x)
        return x, keep, pad

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

    def _decode_step(self, tokens: Tensor, step: int, positions, self_kv, cross_kv) -> Tensor:
        """Logits (N x V, float) of the next token for the N hypotheses whose last token is ``tokens``."""
        dec = self.model.decoder
        x = self._embed(tokens, step, positions)
        for layer, self_attn, cross_attn, cache, kv in zip(dec.layers, self.self_attns, self.cross_attns, self_kv,
                                                           cross_kv):
            pre = layer.normalize_before
            residual = x
            if pre:
                x = layer.self_attn_layer_norm(x)
            x = residual + self_attn(x, step, cache)
            if not pre:
                x = layer.self_attn_layer_norm(x)
            residual = x
            if pre:
                x = layer.encoder_attn_layer_norm(x)
            x = residual + cross_attn(x, kv)
            if not pre:
                x = layer.encoder_attn_layer_norm(x)
            if layer.fc1 is not None:
                residual = x
                if pre:
                    x = layer.final_layer_norm(x)
                x = residual + layer.fc2(layer.activation_fn(layer.fc1(x)))
                if not pre:
                    x = layer.final_layer_norm(x)
        if dec.layer_norm is not None:
            x = dec.layer_norm(x)
        if dec.project_out_dim is not None:
            x = dec.project_out_dim(x)
        logits = dec.output_projection(x)
        if self.temperature != 1.0:
            logits = logits.div_(self.temperature)
        return logits.float()

    def _mask(self, logits: Tensor, step: int, max_len: int) -> Tensor:
        """fairseq's per-step edits of the log-probabilities, applied to the logits (same ranking)."""
        logits[:, self.pad] = -math.inf
        if self.unk_penalty:
            logits[:, self.unk] -= self.unk_penalty
        if step >= max_len:
            eos_col = logits[:, self.eos].clone()
            logits.fill_(-math.inf)
            logits[:, self.eos] = eos_col
        elif step < self.min_len:
            logits[:, self.eos] = -math.inf
        return logits

    def _candidates(self, logits: Tensor, scores: Tensor, step: int, max_len: int, bsz: int, beam: int, buf: Tensor):
        """``search.BeamSearch.step``: the top ``2*beam`` (score, token, beam) per sentence."""
        vocab = logits.size(1)
        rows = logits.size(0)
        lse = logsumexp_rows(logits, buf[:rows])
        if not bool(torch.isfinite(lse).all()):
            # NaN/inf logits: form log-probabilities exactly as fairseq does
            logits = F.log_softmax(logits, dim=-1)
            logits[logits != logits] = -math.inf
            lse = torch.zeros_like(lse)
        logits = self._mask(logits, step, max_len)
        if step == 0:  # all beams are alike: the first one only
            offset = -lse.view(bsz, beam)[:, :1]
            logits = logits.view(bsz, beam, vocab)[:, :1]
        else:
            offset = scores[:, step - 1] - lse.view(-1)
            logits = logits.view(bsz, beam, vocab)
        offset = offset.reshape(bsz, -1)
        k = min(2 * beam, logits.size(1) * vocab - 1)
        cand_scores, flat = top_k_shifted(logits, offset, k)
        return cand_scores, flat % vocab, torch.div(flat, vocab, rounding_mode="trunc")

    def _generate(self, sample, bos_token: Optional[int]):
        model = self.model
        net_input = sample["net_input"]
        src_tokens = net_input["src_tokens"]
        bsz, src_len = src_tokens.size()[:2]
        beam = self.beam_size
        max_len = min(int(self.max_len_a * src_len + self.max_len_b), self.max_len - 1)
        if self.min_len > max_len:
            raise ValueError(f"--min-len ({self.min_len}) cannot be larger than the maximum length ({max_len}): "
                             "lower --min-len or raise --max-len-a/--max-len-b")
        device = src_tokens.device

        enc, keep, enc_pad = self._encode(net_input)
        enc_len = enc_pad.size(1) if enc_pad is not None else enc.size(0) // bsz
        cross_kv = [cross.project(enc, keep, bsz, enc_len, enc_pad) for cross in self.cross_attns]

        dec = model.decoder
        positions = None
        if dec.embed_positions is not None:
            steps = torch.full((1, max_len + 1), self.eos if self.eos != self.pad else self.pad + 1,
                               dtype=torch.long, device=device)
            positions = dec.embed_positions(steps)[0]  # the position of step t, as in incremental decoding
        n = bsz * beam
        self_kv = [
            [enc.new_empty(n, a.num_heads, max_len + 1, a.head_dim) for _ in range(4)]
            for a in (s.attn for s in self.self_attns)
        ]  # K, V and a second K, V to reorder into

        tokens = torch.full((n, max_len + 2), self.pad, dtype=torch.long, device=device)
        tokens[:, 0] = self.eos if bos_token is None else bos_token
        scores = torch.zeros(n, max_len + 1, dtype=torch.float, device=device)
        finalized: List[List[Dict[str, Tensor]]] = [[] for _ in range(bsz)]
        sent_ids = list(range(bsz))  # original index of each remaining sentence
        bbsz_offsets = (torch.arange(bsz, device=device) * beam).unsqueeze(1)
        cand_offsets = torch.arange(2 * beam, device=device)

        for step in range(max_len + 1):
            logits = self._decode_step(tokens[:, step], step, positions, self_kv, cross_kv)
            if step == 0:
                scratch = torch.empty_like(logits)  # for logsumexp_rows, reused every step
            cand_scores, cand_indices, cand_beams = self._candidates(logits, scores, step, max_len, bsz, beam,
                                                                     scratch)
            cand_bbsz_idx = cand_beams + bbsz_offsets
            eos_mask = cand_indices.eq(self.eos) & cand_scores.ne(-math.inf)
            eos_top = eos_mask[:, :beam]
            done: List[int] = []
            if bool(eos_top.any()):
                done = self._finalize(step, cand_bbsz_idx[:, :beam][eos_top], cand_scores[:, :beam][eos_top],
                                      tokens, scores, finalized, sent_ids, beam, max_len)
                if len(done) == bsz:
                    break
            if step >= max_len:
                raise RuntimeError(f"beam search reached step {step} with {bsz} unfinished sentences")
            if done:
                gone = set(done)
                keep = [i for i in range(bsz) if i not in gone]
                batch_idxs = torch.tensor(keep, device=device)
                sent_ids = [sent_ids[i] for i in keep]
                bsz = len(keep)
                eos_mask, cand_scores = eos_mask[batch_idxs], cand_scores[batch_idxs]
                cand_indices, cand_bbsz_idx = cand_indices[batch_idxs], cand_bbsz_idx[batch_idxs]
                bbsz_offsets = bbsz_offsets[:bsz]
                cross_kv = [[t.index_select(0, batch_idxs) if t is not None else None for t in kv] for kv in cross_kv]

            # the first `beam` candidates that do not end in EOS continue (fairseq's active_mask)
            active_mask = eos_mask.to(cand_offsets.dtype) * (2 * beam) + cand_offsets[: eos_mask.size(1)]
            _, active_hypos = torch.topk(active_mask, k=beam, dim=1, largest=False)
            active_bbsz_idx = cand_bbsz_idx.gather(1, active_hypos).view(-1)  # rows before removal
            new_tokens = tokens.new_full((bsz * beam, max_len + 2), self.pad)
            torch.index_select(tokens[:, : step + 1], 0, active_bbsz_idx, out=new_tokens[:, : step + 1])
            new_tokens[:, step + 1] = cand_indices.gather(1, active_hypos).view(-1)
            new_scores = scores.new_zeros(bsz * beam, max_len + 1)
            if step > 0:
                torch.index_select(scores[:, :step], 0, active_bbsz_idx, out=new_scores[:, :step])
            new_scores[:, step] = cand_scores.gather(1, active_hypos).view(-1)
            tokens, scores = new_tokens, new_scores
            n_old, n = n, bsz * beam
            for buffers in self_kv:
                for src, dst in ((buffers[0], buffers[2]), (buffers[1], buffers[3])):
                    torch.index_select(src[:n_old, :, : step + 1], 0, active_bbsz_idx, out=dst[:n, :, : step + 1])
                buffers[0], buffers[2], buffers[1], buffers[3] = buffers[2], buffers[0], buffers[3], buffers[1]

        for i, hypos in enumerate(finalized):  # best first, as fairseq sorts them
            order = torch.sort(torch.tensor([float(h["score"].item()) for h in hypos]), descending=True)[1]
            finalized[i] = [hypos[j] for j in order]
        return finalized

    def _finalize(self, step, bbsz_idx, eos_scores, tokens, scores, finalized, sent_ids, beam, max_len) -> List[int]:
        """``SequenceGenerator.finalize_hypos``: store hypotheses ending at ``step``; return the indices
        (in the current batch) of the sentences that now have ``beam`` hypotheses (or hit max_len)."""
        hyp_tokens = tokens.index_select(0, bbsz_idx)[:, 1 : step + 2]
        hyp_tokens[:, step] = self.eos
        pos_scores = scores.index_select(0, bbsz_idx)[:, : step + 1]
        pos_scores[:, step] = eos_scores
        pos_scores[:, 1:] = pos_scores[:, 1:] - pos_scores[:, :-1]
        if self.normalize_scores:
            eos_scores = eos_scores / (step + 1) ** self.len_penalty
        rows = torch.div(bbsz_idx, beam, rounding_mode="trunc").tolist()
        empty = torch.empty(0)
        for i, row in enumerate(rows):
            hypos = finalized[sent_ids[row]]
            if len(hypos) < beam:
                hypos.append({"tokens": hyp_tokens[i], "score": eos_scores[i], "attention": empty,
                              "alignment": empty, "positional_scores": pos_scores[i]})
        return [row for row in sorted(set(rows)) if len(finalized[sent_ids[row]]) == beam or step == max_len]
