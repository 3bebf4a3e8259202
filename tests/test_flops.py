"""The FLOP counter of mdn-bench's roofline: hand-computed counts for tiny models, and torch's own FLOP
counter on the decoder of every architecture family (Transformer, MDN and the peers AAN, CAN, SAN)."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import build_model
from mdn_fairseq.bench.flops import GROUPS, FlopCountError, Lengths, count_flops
from mdn_fairseq.bench.models import quantize_int8

S, T, K = 7, 5, 2  # source tokens (EOS included), decoder steps (output tokens + EOS), beam


def test_mdn_tiny_by_hand():
    # mdn_tiny: model width d = 64, 4 encoder layers of 4 heads (attention width 64) with FFN 128;
    # 1 decoder layer with one 16-wide head (self and cross), no FFN; output rank 16, target vocabulary 60.
    d, f, a, r, v = 64, 128, 16, 16, 60
    flops = count_flops(build_model("mdn_tiny", src_vocab=50, tgt_vocab=v), [S], [T], K)
    enc_attn_layer = 4 * S * d * d + 2 * S * S * d  # q, k, v, out projections + scores and context
    enc_ffn_layer = 2 * S * d * f  # fc1 and fc2
    dec_self = K * T * 4 * d * a + 2 * a * K * (T * (T + 1) // 2)  # projections; products over 1..T positions
    dec_cross = K * T * 2 * d * a + 2 * S * d * a + 2 * a * K * T * S  # q, out per step; k, v once; products
    output = K * T * (d * r + r * v)  # x·B then ·Aᵀ
    assert flops == {
        "enc attn": 2 * 4 * enc_attn_layer,
        "enc FFN": 2 * 4 * enc_ffn_layer,
        "dec attn": 2 * (dec_self + dec_cross),
        "dec FFN": 0,
        "output proj": 2 * output,
        "other": 0,
    }
    assert flops["enc attn"] == 967_680 and flops["output proj"] == 39_680  # the numbers, written out once


def test_transformer_tiny_two_sentences_by_hand():
    # mdn_transformer_tiny (fairseq's Transformer at tiny dims): 2+2 layers, width 64, 4 heads, FFN 128,
    # full output layer V = 60; two sentences of different lengths: counts add up per sentence.
    d, f, v = 64, 128, 60
    model = build_model("mdn_transformer_tiny", src_vocab=50, tgt_vocab=v)
    src, tgt = [7, 3], [5, 2]
    flops = count_flops(model, src, tgt, K)
    enc_attn = sum(2 * 2 * (4 * s * d * d + 2 * s * s * d) for s in src)
    dec_attn = sum(
        2
        * 2
        * (K * t * 4 * d * d + 2 * d * K * t * (t + 1) // 2 + K * t * 2 * d * d + 2 * s * d * d + 2 * d * K * t * s)
        for s, t in zip(src, tgt)
    )
    assert flops == {
        "enc attn": enc_attn,
        "enc FFN": 2 * 2 * 2 * sum(src) * d * f,
        "dec attn": dec_attn,
        "dec FFN": 2 * 2 * 2 * K * sum(tgt) * d * f,
        "output proj": 2 * K * sum(tgt) * d * v,
        "other": 0,
    }
    assert flops == {
        g: a + b for g, a, b in zip(GROUPS, *(count_flops(model, [s], [t], K).values() for s, t in zip(src, tgt)))
    }


def _cross_kv_surplus(model):
    """FLOPs of projecting the encoder output to keys/values for K-1 extra beam copies (fairseq does)."""
    total = 0
    for m in model.decoder.modules():
        for name in ("enc_k_proj", "enc_v_proj") if hasattr(m, "enc_k_proj") else ("k_proj", "v_proj"):
            if getattr(m, "encoder_decoder_attention", False) or name.startswith("enc_"):
                lin = getattr(m, name)
                total += 2 * S * lin.in_features * lin.out_features * (K - 1)
    return total


@pytest.mark.parametrize("arch", ["mdn_transformer_tiny", "mdn_tiny", "aan_tiny", "can_tiny", "san_tiny"])
def test_decoder_matches_torch_flop_counter(arch):
    """fairseq's incremental decoder, K beam copies, T steps, under torch's FlopCounterMode: our count
    plus the K-1 surplus projections of the encoder output that this decoding path makes."""
    model = build_model(arch)
    ours = count_flops(model, [S], [T], K)
    src = torch.randint(4, 50, (1, S))
    src[0, -1] = model.encoder.dictionary.eos()
    with torch.no_grad():
        with FlopCounterMode(display=False) as enc_counter:
            enc = model.encoder(src, src_lengths=torch.tensor([S]))
        enc = model.encoder.reorder_encoder_out(enc, torch.zeros(K, dtype=torch.long))
        state, tokens = {}, torch.full((K, 1), model.decoder.dictionary.eos())
        with FlopCounterMode(display=False) as dec_counter:
            for _ in range(T):
                model.decoder(tokens, encoder_out=enc, incremental_state=state)
                tokens = torch.cat([tokens, torch.full((K, 1), 5)], dim=1)
    dec = ours["dec attn"] + ours["dec FFN"] + ours["output proj"]
    assert dec_counter.get_total_flops() == dec + _cross_kv_surplus(model)
    # the encoder's linears (torch's counter does not see inside fairseq's fused encoder attention)
    linears = sum(2 * S * m.in_features * m.out_features for m in model.encoder.modules() if isinstance(m, nn.Linear))
    assert enc_counter.get_total_flops() in (linears, ours["enc attn"] + ours["enc FFN"])
    assert ours["enc attn"] + ours["enc FFN"] - linears == len(model.encoder.layers) * 2 * 2 * S * S * 64


def test_int8_copy_counts_the_same():
    model = build_model("mdn_tiny")
    assert count_flops(quantize_int8(model), [S, 4], [T, 3], K) == count_flops(model, [S, 4], [T, 3], K)


def test_unknown_weight_matrix_and_bad_lengths_are_refused():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(4, 4))

    model = build_model("mdn_tiny")
    model.decoder.layers[0].odd = Odd()
    with pytest.raises(FlopCountError, match=r"decoder\.layers\.0\.odd \(Odd\).*ATTENTION_PRODUCTS"):
        count_flops(model, [S], [T], K)
    with pytest.raises(FlopCountError, match="2 source lengths but 1 target lengths"):
        Lengths.of([3, 4], [5], 1)
    with pytest.raises(FlopCountError, match=">= 1"):
        Lengths.of([3], [0], 1)
