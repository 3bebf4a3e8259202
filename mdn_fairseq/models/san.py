"""Sharing attention weights across decoder layers (SAN; Xiao et al., IJCAI 2019) as a peer model:
``--arch san``, ``san_tiny``.

``--san-self-attn-blocks`` / ``--san-cross-attn-blocks`` cut the decoder's layers into blocks
(:mod:`mdn_fairseq.modules.shared_attention`); with all blocks of size 1 the model is fairseq's
Transformer (same parameter names, same outputs). The MDN trick flags apply as for ``mdn``.
"""

from typing import Dict, List, Optional

from fairseq.models import register_model, register_model_architecture
from torch import Tensor

from ..modules.shared_attention import OWN, SANDecoderLayer, block_roles
from .mdn import MDNDecoder, mdn_transformer_base, mdn_transformer_small, mdn_transformer_tiny
from .peers import PeerModel, parse_blocks


class SANDecoder(MDNDecoder):
    """The MDN decoder whose layer loop hands the shared attention from the first layer of each block
    to the others. Layers that share nothing are plain MDN (i.e. fairseq) layers."""

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        idx = self._san_built = getattr(self, "_san_built", -1) + 1  # fairseq builds the layers in order
        layers = cfg.decoder.layers
        self_role = block_roles(parse_blocks("san_self_attn_blocks", cfg.san_self_attn_blocks, layers))[idx]
        cross_role = block_roles(parse_blocks("san_cross_attn_blocks", cfg.san_cross_attn_blocks, layers))[idx]
        if self_role == OWN and cross_role == OWN:
            return super().build_decoder_layer(cfg, no_encoder_attn)
        return SANDecoderLayer(cfg, no_encoder_attn, self_role=self_role, cross_role=cross_role)

    def _embed(self, prev_output_tokens: Tensor, incremental_state) -> Tensor:
        """Token and position embeddings (T × B × C) of the new positions, as fairseq's decoder makes them."""
        positions = None
        if self.embed_positions is not None:
            positions = self.embed_positions(prev_output_tokens, incremental_state=incremental_state)
        if incremental_state is not None:
            prev_output_tokens = prev_output_tokens[:, -1:]
            positions = positions[:, -1:] if positions is not None else None
        x = self.embed_scale * self.embed_tokens(prev_output_tokens.contiguous())
        if self.quant_noise is not None:
            x = self.quant_noise(x)
        if self.project_in_dim is not None:
            x = self.project_in_dim(x)
        if positions is not None:
            x += positions
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return self.dropout_module(x).transpose(0, 1)

    def extract_features_scriptable(
        self,
        prev_output_tokens,
        encoder_out: Optional[Dict[str, List[Tensor]]],
        incremental_state=None,
        full_context_alignment: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
    ):
        """fairseq's decoder features (B × T × C and ``{"attn", "inner_states"}``); the layer loop hands the
        first layer's self-attention weights and cross-attention output on to the rest of its blocks."""
        alignment_layer = self.num_layers - 1 if alignment_layer is None else alignment_layer
        enc = encoder_out["encoder_out"][0] if encoder_out and len(encoder_out["encoder_out"]) > 0 else None
        padding_mask = (
            encoder_out["encoder_padding_mask"][0]
            if encoder_out and len(encoder_out["encoder_padding_mask"]) > 0
            else None
        )
        x = self._embed(prev_output_tokens, incremental_state)
        tokens = prev_output_tokens[:, -1:] if incremental_state is not None else prev_output_tokens
        self_attn_padding_mask = tokens.eq(self.padding_idx) if tokens.eq(self.padding_idx).any() else None
        attn: Optional[Tensor] = None
        inner_states: List[Optional[Tensor]] = [x]
        weights: Optional[Tensor] = None  # the current self-attention block's softmax weights
        cross: Optional[Tensor] = None  # the current cross-attention block's output
        for idx, layer in enumerate(self.layers):
            mask = self.buffered_future_mask(x) if incremental_state is None and not full_context_alignment else None
            kwargs = dict(
                self_attn_mask=mask,
                self_attn_padding_mask=self_attn_padding_mask,
                need_attn=idx == alignment_layer,
                need_head_weights=idx == alignment_layer,
            )
            if isinstance(layer, SANDecoderLayer):
                x, layer_attn, new_weights, new_cross = layer(
                    x, enc, padding_mask, incremental_state, self_weights=weights, cross_out=cross, **kwargs
                )
                weights = new_weights if new_weights is not None else weights
                cross = new_cross if new_cross is not None else cross
            else:
                x, layer_attn, _ = layer(x, enc, padding_mask, incremental_state, **kwargs)
            inner_states.append(x)
            if layer_attn is not None and idx == alignment_layer:
                attn = layer_attn.float().to(x)
        if attn is not None:
            attn = (attn[:alignment_heads] if alignment_heads is not None else attn).mean(dim=0)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        x = x.transpose(0, 1)
        if self.project_out_dim is not None:
            x = self.project_out_dim(x)
        return x, {"attn": [attn], "inner_states": inner_states}


@register_model("san")
class SANModel(PeerModel):
    """Transformer whose decoder shares attention within blocks of layers."""

    peer = "san"
    decoder_class = SANDecoder


@register_model_architecture("san", "san")
def san_architecture(args):
    """SAN at Transformer-base dims (6+6, post-norm): self-attention weights shared in blocks 2,4 and
    cross-attention in blocks 4,2 (``mdn-san-blocks`` proposes blocks from a trained model)."""
    args.san_self_attn_blocks = getattr(args, "san_self_attn_blocks", "2,4")
    args.san_cross_attn_blocks = getattr(args, "san_cross_attn_blocks", "4,2")
    mdn_transformer_base(args)


@register_model_architecture("san", "san_tiny")
def san_tiny(args):
    """Tiny SAN for CPU tests and demos: ``mdn_transformer_tiny`` dims with 3 decoder layers, self-attention
    blocks 1,2 and cross-attention blocks 2,1."""
    args.decoder_layers = getattr(args, "decoder_layers", 3)
    args.san_self_attn_blocks = getattr(args, "san_self_attn_blocks", "1,2")
    args.san_cross_attn_blocks = getattr(args, "san_cross_attn_blocks", "2,1")
    mdn_transformer_tiny(args)


@register_model_architecture("san", "san_small")
def san_small(args):
    """Small SAN (Multi30k ``*_small`` configs): ``mdn_transformer_small`` dims (256 wide, 3+3 layers),
    self-attention blocks 1,2 and cross-attention blocks 2,1 (as ``san_tiny``)."""
    args.san_self_attn_blocks = getattr(args, "san_self_attn_blocks", "1,2")
    args.san_cross_attn_blocks = getattr(args, "san_cross_attn_blocks", "2,1")
    mdn_transformer_small(args)
