"""Attention whose inner width differs from the model width (the MDN decoder's single 64-dim head)."""

from fairseq.modules import MultiheadAttention
from fairseq.modules.quant_noise import quant_noise
from torch import nn

from ..errors import ArchitectureError


class NarrowMultiheadAttention(MultiheadAttention):
    """fairseq's :class:`MultiheadAttention` with q/k/v projecting ``model_dim -> attention_dim``
    and the output projecting ``attention_dim -> model_dim``.

    With ``num_heads=1, attention_dim=64`` inside a 512-wide model this is exactly one head of a
    Transformer-base attention layer, so a teacher head can be copied into it (weight distillation).
    It is the shape fairseq itself gives an attention layer after head pruning
    (``_adaptive_prune_heads``), so fairseq's forward, incremental state and beam reordering are
    reused unchanged; ``embed_dim`` keeps fairseq's meaning of *inner* width.

    ``forward`` is fairseq's: ``query`` (tgt_len, batch, model_dim), ``key``/``value`` (src_len, batch,
    kdim/vdim) -> ``(attn, weights)`` with ``attn`` (tgt_len, batch, model_dim) and ``weights``
    (batch, tgt_len, src_len), averaged over heads, or None when not asked for.
    Parameters (fairseq's names): ``q_proj``/``k_proj``/``v_proj`` weights (attention_dim × model_dim/kdim/vdim)
    and biases (attention_dim), ``out_proj`` weight (model_dim × attention_dim) and bias (model_dim).
    Raises :class:`~mdn_fairseq.errors.ArchitectureError` unless ``attention_dim`` is a positive multiple
    of ``num_heads``.
    """

    def __init__(
        self,
        model_dim,
        num_heads,
        attention_dim,
        kdim=None,
        vdim=None,
        dropout=0.0,
        bias=True,
        self_attention=False,
        encoder_decoder_attention=False,
        q_noise=0.0,
        qn_block_size=8,
    ):
        if attention_dim <= 0 or attention_dim % num_heads != 0:
            raise ArchitectureError(
                f"--decoder-attention-dim ({attention_dim}) must be a positive multiple of "
                f"--decoder-attention-heads ({num_heads})"
            )
        # A model_dim-wide layer first (fairseq's checks and defaults), then narrowed as head pruning does.
        super().__init__(
            model_dim,
            num_heads if model_dim % num_heads == 0 else 1,
            kdim=kdim,
            vdim=vdim,
            dropout=dropout,
            bias=bias,
            self_attention=self_attention,
            encoder_decoder_attention=encoder_decoder_attention,
            q_noise=q_noise,
            qn_block_size=qn_block_size,
        )
        self.model_dim = model_dim
        self.num_heads = num_heads
        self.embed_dim = attention_dim
        self.head_dim = attention_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = quant_noise(nn.Linear(model_dim, attention_dim, bias=bias), q_noise, qn_block_size)
        self.k_proj = quant_noise(nn.Linear(self.kdim, attention_dim, bias=bias), q_noise, qn_block_size)
        self.v_proj = quant_noise(nn.Linear(self.vdim, attention_dim, bias=bias), q_noise, qn_block_size)
        self.out_proj = quant_noise(nn.Linear(attention_dim, model_dim, bias=bias), q_noise, qn_block_size)
        self._set_skip_embed_dim_check()
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"model_dim={self.model_dim}, attention_dim={self.embed_dim}, num_heads={self.num_heads}"
