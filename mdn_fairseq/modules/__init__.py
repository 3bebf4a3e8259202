from .low_rank_linear import LowRankLinear
from .mdn_decoder_layer import MDNDecoderLayer, decoder_attention_dim
from .narrow_attention import NarrowMultiheadAttention

__all__ = ["LowRankLinear", "MDNDecoderLayer", "NarrowMultiheadAttention", "decoder_attention_dim"]
