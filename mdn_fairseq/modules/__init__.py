from .low_rank_linear import LowRankLinear
from .mdn_decoder_layer import MDNDecoderLayer, decoder_attention_dim
from .narrow_attention import NarrowMultiheadAttention

__all__ = ["LowRankLinear", "MDNDecoderLayer", "NarrowMultiheadAttention", "decoder_attention_dim"]
from .average_attention import AANDecoderLayer, AverageAttention  # noqa: E402,F401  (the peers' layers)
from .compressed_attention import CANDecoderLayer, CompressedAttention  # noqa: E402,F401
from .shared_attention import SANDecoderLayer, SharedWeightsAttention  # noqa: E402,F401
