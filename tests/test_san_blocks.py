"""mdn-san-blocks: SAN blocks proposed from a trained model's attention (Jensen-Shannon similarity of the
decoder layers, greedy blocks over a threshold). The end-to-end run is in tests/test_peers.py (slow)."""

import math

import pytest
import torch

from conftest import build_model, random_batch
from mdn_fairseq.errors import MDNError
from mdn_fairseq.san_blocks import greedy_blocks, js_similarity, layer_attention, propose_blocks


def test_js_similarity_by_hand():
    p = torch.tensor([[[1.0, 0.0]]])
    q = torch.tensor([[[0.5, 0.5]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    # m = (0.75, 0.25): KL(p||m) = log2(4/3), KL(q||m) = (log2(2/3) + log2(2)) / 2
    js = (math.log2(4 / 3) + (math.log2(2 / 3) + 1) / 2) / 2
    assert js_similarity(p, q, mask) == pytest.approx(1 - js, abs=1e-6)
    assert js_similarity(p, p, mask) == pytest.approx(1.0)
    assert js_similarity(p, p.flip(-1), mask) == pytest.approx(0.0, abs=1e-6)


def test_greedy_blocks():
    sim = torch.tensor([[1, 0.95, 0.5, 0.5], [0.95, 1, 0.6, 0.5], [0.5, 0.6, 1, 0.92], [0.5, 0.5, 0.92, 1]])
    assert greedy_blocks(sim, 0.9) == [2, 2]
    assert greedy_blocks(sim, 0.99) == [1, 1, 1, 1] and greedy_blocks(sim, 0.0) == [4]
    chain = torch.tensor([[1, 0.95, 0.8], [0.95, 1, 0.95], [0.8, 0.95, 1]])  # 2 is like 1 but not like 0
    assert greedy_blocks(chain, 0.9) == [2, 1]
    with pytest.raises(MDNError, match="--threshold 1.5"):
        greedy_blocks(chain, 1.5)


def test_propose_blocks_on_a_transformer():
    """Random weights: a proper similarity matrix. Queries zeroed: every layer attends uniformly (over the
    prefix, over the real source), so all layers are alike and form one block."""
    model = build_model("mdn_transformer_tiny", decoder_layers=3)
    src, lengths, prev = random_batch(model)
    net_input = {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev}
    self_d, cross_d, mask = layer_attention(model, net_input)
    assert self_d[0].shape == (3, 6, 6) and cross_d[0].shape == (3, 6, 7) and mask.all()
    assert torch.allclose(self_d[1].sum(-1), torch.ones(3, 6)) and (self_d[1].triu(1) == 0).all()
    assert (cross_d[2][0, :, :2] == 0).all()  # the padded source positions
    result = propose_blocks(model, net_input, threshold=0.9)
    for kind in ("self", "cross"):
        sim = torch.tensor(result[kind]["matrix"])
        assert torch.allclose(sim, sim.t()) and torch.allclose(sim.diag(), torch.ones(3))
        assert ((sim >= 0) & (sim <= 1 + 1e-6)).all() and sum(result[kind]["blocks"]) == 3
    with torch.no_grad():
        for layer in model.decoder.layers:
            for attn in (layer.self_attn, layer.encoder_attn):
                attn.q_proj.weight.zero_()
                attn.q_proj.bias.zero_()
    uniform = propose_blocks(model, net_input, threshold=0.999)
    assert uniform["self"]["blocks"] == [3] and uniform["cross"]["blocks"] == [3]


def test_san_blocks_refuses_a_model_without_self_attention_weights():
    model = build_model("aan_tiny")
    src, lengths, prev = random_batch(model)
    with pytest.raises(MDNError, match="decoder layer 0 has no fairseq self_attn"):
        layer_attention(model, {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev})


def test_san_blocks_cli_bad_input(tmp_path, capsys):
    from mdn_fairseq.cli.san_blocks import main

    with pytest.raises(SystemExit) as exit_:
        main(["--path", str(tmp_path / "nope.pt"), "--data", str(tmp_path)])
    assert exit_.value.code == 2
    assert f"mdn-san-blocks: --path {tmp_path / 'nope.pt'}: no such file" in capsys.readouterr().err
