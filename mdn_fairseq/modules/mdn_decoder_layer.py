"""fairseq's decoder layer with the MDN structure switches: narrow attention and no FFN."""

from typing import Dict, List, Optional

from fairseq.modules.transformer_layer import TransformerDecoderLayerBase
from torch import Tensor

from .narrow_attention import NarrowMultiheadAttention


def decoder_attention_dim(cfg) -> int:
    """Inner width (units: features) of the decoder's self- and cross-attention:
    ``--decoder-attention-dim``, else the model width ``cfg.decoder.embed_dim``."""
    return getattr(cfg, "decoder_attention_dim", None) or cfg.decoder.embed_dim


class MDNDecoderLayer(TransformerDecoderLayerBase):
    """:class:`TransformerDecoderLayerBase` whose self/cross attention may be narrower than the model
    (``--decoder-attention-dim``) and whose FFN sub-layer may be absent (``--no-decoder-ffn``,
    i.e. ``decoder.ffn_embed_dim == 0``: no fc1, fc2 or final_layer_norm parameters at all).
    With both switches off it *is* fairseq's layer: same parameters, same forward.
    Parameter names are fairseq's (``self_attn.q_proj.weight``, ``encoder_attn_layer_norm.bias``, ...), so
    weight distillation and fairseq's checkpoint code treat it as a Transformer decoder layer.
    """

    def __init__(self, cfg, no_encoder_attn=False, add_bias_kv=False, add_zero_attn=False):
        super().__init__(cfg, no_encoder_attn, add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn)
        if self.fc1 is None:
            self.final_layer_norm = None

    def _narrow(self, cfg) -> Optional[int]:
        dim = decoder_attention_dim(cfg)
        return None if dim == cfg.decoder.embed_dim else dim

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        """fairseq's hook: a :class:`NarrowMultiheadAttention` when ``--decoder-attention-dim`` narrows it."""
        dim = self._narrow(cfg)
        if dim is None:
            return super().build_self_attention(embed_dim, cfg, add_bias_kv, add_zero_attn)
        return NarrowMultiheadAttention(
            embed_dim,
            cfg.decoder.attention_heads,
            dim,
            dropout=cfg.attention_dropout,
            self_attention=True,
            q_noise=self.quant_noise,
            qn_block_size=self.quant_noise_block_size,
        )

    def build_encoder_attention(self, embed_dim, cfg):
        """fairseq's hook: the cross-attention, narrow like the self-attention (keys/values: encoder width)."""
        dim = self._narrow(cfg)
        if dim is None:
            return super().build_encoder_attention(embed_dim, cfg)
        return NarrowMultiheadAttention(
            embed_dim,
            cfg.decoder.attention_heads,
            dim,
            kdim=cfg.encoder.embed_dim,
            vdim=cfg.encoder.embed_dim,
            dropout=cfg.attention_dropout,
            encoder_decoder_attention=True,
            q_noise=self.quant_noise,
            qn_block_size=self.quant_noise_block_size,
        )

    def build_fc1(self, input_dim, output_dim, q_noise, qn_block_size):
        """fairseq's hook: no ``fc1`` when the FFN width is 0 (``--no-decoder-ffn``)."""
        if output_dim == 0:
            return None
        return super().build_fc1(input_dim, output_dim, q_noise, qn_block_size)

    def build_fc2(self, input_dim, output_dim, q_noise, qn_block_size):
        """fairseq's hook: no ``fc2`` when the FFN width is 0 (``--no-decoder-ffn``)."""
        if input_dim == 0:
            return None
        return super().build_fc2(input_dim, output_dim, q_noise, qn_block_size)

    def forward(
        self,
        x,
        encoder_out: Optional[Tensor] = None,
        encoder_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        prev_self_attn_state: Optional[List[Tensor]] = None,
        prev_attn_state: Optional[List[Tensor]] = None,
        self_attn_mask: Optional[Tensor] = None,
        self_attn_padding_mask: Optional[Tensor] = None,
        need_attn: bool = False,
        need_head_weights: bool = False,
    ):
        """One decoder layer, as fairseq's ``TransformerDecoderLayerBase.forward``.

        ``x`` (tgt_len, batch, model_dim); ``encoder_out`` (src_len, batch, encoder_dim);
        ``encoder_padding_mask`` (batch, src_len), True at padding; ``self_attn_mask`` (tgt_len, tgt_len),
        additive (−inf above the diagonal).  Returns ``(x, attn, None)``: ``x`` (tgt_len, batch, model_dim)
        and the cross-attention weights (batch, tgt_len, src_len), averaged over heads (per head,
        (heads, batch, tgt_len, src_len), with ``need_head_weights``), or None when not asked for.
        With an FFN this is fairseq's forward; without one, its two attention sub-layers only.
        Raises ``ValueError`` for ``prev_self_attn_state``/``prev_attn_state`` without an FFN (fairseq's
        generators pass the state in ``incremental_state``).
        """
        if self.fc1 is not None:
            return super().forward(
                x,
                encoder_out,
                encoder_padding_mask,
                incremental_state,
                prev_self_attn_state,
                prev_attn_state,
                self_attn_mask,
                self_attn_padding_mask,
                need_attn,
                need_head_weights,
            )
        if prev_self_attn_state is not None or prev_attn_state is not None:
            raise ValueError("an FFN-free MDN decoder layer takes its attention state from incremental_state only")
        # The FFN-free layer: the self- and cross-attention sub-layers of the parent, nothing after them.
        residual = x
        if self.normalize_before:
            x = self.self_attn_layer_norm(x)
        x, _ = self.self_attn(
            query=x,
            key=x,
            value=x,
            key_padding_mask=self_attn_padding_mask,
            incremental_state=incremental_state,
            need_weights=False,
            attn_mask=self_attn_mask,
        )
        x = self.residual_connection(self.dropout_module(x), residual)
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)

        attn: Optional[Tensor] = None
        if self.encoder_attn is not None and encoder_out is not None:
            residual = x
            if self.normalize_before:
                x = self.encoder_attn_layer_norm(x)
            x, attn = self.encoder_attn(
                query=x,
                key=encoder_out,
                value=encoder_out,
                key_padding_mask=encoder_padding_mask,
                incremental_state=incremental_state,
                static_kv=True,
                need_weights=need_attn or need_head_weights or (not self.training and self.need_attn),
                need_head_weights=need_head_weights,
            )
            x = self.residual_connection(self.dropout_module(x), residual)
            if not self.normalize_before:
                x = self.encoder_attn_layer_norm(x)
        return x, attn, None
