"""The paper's peers: AAN, SAN, CAN and Table 7's "+ Ours" (aan_mdn, can_mdn) -- exact incremental decoding,
each block against its equations, parameter counts, bad input, and a few training updates end to end."""

import json
import math

import pytest
import torch

from conftest import USER_DIR, binarise, build_model, random_batch, run_cli, train
from mdn_fairseq.errors import MDNError
from mdn_fairseq.modules import AverageAttention, CompressedAttention, SharedWeightsAttention

SMALL_ENCODER = {"encoder_layers": 2, "encoder_ffn_embed_dim": 256}  # paper-dim decoders, cheap encoders
CASES = {
    "aan_tiny": ("aan_tiny", {}),
    "aan_tiny-prenorm-ffn": ("aan_tiny", {"decoder_normalize_before": True, "aan_ffn": True}),
    "aan_tiny-no-gating-tricks": (
        "aan_tiny",
        {
            "no_aan_gating": True,
            "no_decoder_ffn": True,
            "output_rank": 16,
            "decoder_attention_heads": 1,
            "decoder_attention_dim": 16,
        },
    ),
    "san_tiny": ("san_tiny", {}),
    "san_tiny-prenorm": (
        "san_tiny",
        {"decoder_normalize_before": True, "san_self_attn_blocks": "3", "san_cross_attn_blocks": "1,2"},
    ),
    "san_tiny-tricks": (
        "san_tiny",
        {"no_decoder_ffn": True, "decoder_attention_heads": 1, "decoder_attention_dim": 16, "output_rank": 16},
    ),
    "can_tiny": ("can_tiny", {}),
    "can_tiny-postnorm-narrow": (
        "can_tiny",
        {
            "decoder_normalize_before": False,
            "decoder_attention_heads": 2,
            "decoder_attention_dim": 16,
            "can_value_dim": 32,
        },
    ),
    "aan_mdn": ("aan_mdn", SMALL_ENCODER),
    "can_mdn": ("can_mdn", SMALL_ENCODER),
}


def build_case(name, **extra):
    arch, overrides = CASES[name]
    return build_model(arch, tgt_vocab=100, **overrides, **extra)


def step_by_step(model, src, lengths, prev):
    """Decoder outputs for ``prev`` one position at a time (fairseq's incremental decoding)."""
    enc = model.encoder(src, src_lengths=lengths)
    state, steps = {}, []
    for t in range(prev.size(1)):
        out, _ = model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)
        steps.append(out[:, -1])
    return torch.stack(steps, dim=1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_incremental_decoding_equals_full_forward(case):
    model = build_case(case)
    src, lengths, prev = random_batch(model)
    with torch.no_grad():
        full, _ = model(src, lengths, prev)
        assert (full - step_by_step(model, src, lengths, prev)).abs().max().item() < 1e-5


@pytest.mark.parametrize("case", sorted(CASES))
def test_incremental_decoding_with_beam_reordering(case):
    """Three beams of one sentence decode two steps, are reordered as beam search does (one dropped, one
    duplicated), decode on: every later step equals the full forward on the reordered prefixes."""
    model = build_case(case)
    src, lengths, prev = random_batch(model, bsz=3)
    src, lengths = src[[1, 1, 1]], lengths[[1, 1, 1]]
    order = torch.tensor([2, 0, 0])
    with torch.no_grad():
        enc = model.encoder(src, src_lengths=lengths)
        state = {}
        for t in (1, 2):
            model.decoder(prev[:, :t], encoder_out=enc, incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, order)
        enc = model.encoder.reorder_encoder_out(enc, order)
        prev = prev[order]
        full, _ = model.decoder(prev, encoder_out=enc)
        for t in range(3, prev.size(1) + 1):
            out, _ = model.decoder(prev[:, :t], encoder_out=enc, incremental_state=state)
            assert (out[:, -1] - full[:, t - 1]).abs().max().item() < 1e-5, t


# --------------------------------------------------------------------------------------------- AAN


def test_aan_block_by_hand_three_steps():
    """y = (1,2), (3,4), (5,0): averages (1,2), (2,3), (3,2). Gate W = 0, b = (0, 0, ln 3, ln 3), so
    σ(i) = 1/2 and σ(f) = 3/4: h̃_j = y_j/2 + 3·ā_j/4."""
    block = AverageAttention(2, gating=True)
    with torch.no_grad():
        block.gate.weight.zero_()
        block.gate.bias.copy_(torch.tensor([0.0, 0.0, math.log(3), math.log(3)]))
    y = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]]).unsqueeze(1)  # T × B × d
    expected = torch.tensor([[1.25, 2.5], [3.0, 4.25], [4.75, 1.5]]).unsqueeze(1)
    out, weights = block(y, y, y)
    assert weights is None
    assert torch.allclose(out, expected, atol=1e-6)
    state = {}
    steps = [block(y[t : t + 1], None, None, incremental_state=state)[0] for t in range(3)]
    assert torch.allclose(torch.cat(steps), expected, atol=1e-6)


def test_aan_block_equals_its_formula_with_ffn():
    torch.manual_seed(0)
    block = AverageAttention(6, ffn_dim=10, gating=True)
    y = torch.randn(5, 2, 6)
    out, _ = block(y)
    for j in range(5):
        avg = y[: j + 1].mean(dim=0)
        g = block.fc2(torch.relu(block.fc1(avg)))
        i, f = (torch.cat([y[j], g], dim=-1) @ block.gate.weight.t() + block.gate.bias).chunk(2, dim=-1)
        assert torch.allclose(out[j], torch.sigmoid(i) * y[j] + torch.sigmoid(f) * g, atol=1e-6)


def test_aan_gating_and_ffn_switches_change_the_parameters():
    names = lambda model: [n for n, _ in model.decoder.layers[0].self_attn.named_parameters()]  # noqa: E731
    assert names(build_model("aan_tiny")) == ["gate.weight", "gate.bias"]
    assert names(build_model("aan_tiny", no_aan_gating=True)) == []
    with_ffn = build_model("aan_tiny", aan_ffn=True, decoder_ffn_embed_dim=96).decoder.layers[0].self_attn
    assert with_ffn.fc1.weight.shape == (96, 64) and with_ffn.fc2.weight.shape == (64, 96)
    decoder = build_model("aan_tiny", no_aan_gating=True).decoder
    assert not [n for n, _ in decoder.named_parameters() if "gate" in n or "self_attn.q_proj" in n]


@pytest.mark.parametrize("prenorm", [False, True])
def test_aan_sublayer_norm_and_residual(prenorm):
    """Post-norm: the block averages the layer input y and the sub-layer gives LN(y + h̃); pre-norm: it
    averages LN(y) and the sub-layer gives y + h̃ (dropout off in eval)."""
    model = build_model("aan_tiny", decoder_normalize_before=prenorm)
    layer = model.decoder.layers[0]
    seen = {}
    layer.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    layer.self_attn.register_forward_hook(lambda m, a, kw, out: seen.update(y=kw["query"], h=out[0]), with_kwargs=True)
    layer.encoder_attn.register_forward_pre_hook(lambda m, a, kw: seen.update(q=kw["query"]), with_kwargs=True)
    src, lengths, prev = random_batch(model)
    with torch.no_grad():
        model(src, lengths, prev)
        x, ln1, ln2 = seen["x"], layer.self_attn_layer_norm, layer.encoder_attn_layer_norm
        assert torch.allclose(seen["y"], ln1(x) if prenorm else x)
        assert torch.allclose(seen["q"], ln2(x + seen["h"]) if prenorm else ln1(x + seen["h"]), atol=1e-6)


# --------------------------------------------------------------------------------------------- CAN


def can_reference(m: CompressedAttention, x, enc, enc_pad):
    """The CAN equations written out per sentence and head, with loops (T × B × d)."""
    T, B, _ = x.shape
    S, H, dk, dv = enc.size(0), m.num_heads, m.head_dim, m.value_head_dim
    causal = torch.ones(T, T).tril().bool()
    out = torch.zeros(T, B, m.out_proj.out_features)
    weights = torch.zeros(H, B, T, S + T)
    for b in range(B):
        heads = []
        for h in range(H):
            qs, vs = slice(h * dk, (h + 1) * dk), slice(h * dv, (h + 1) * dv)
            q = x[:, b] @ m.q_proj.weight[qs].t() + m.q_proj.bias[qs]
            keys = torch.cat(
                [
                    enc[:, b] @ m.enc_k_proj.weight[qs].t() + m.enc_k_proj.bias[qs],
                    x[:, b] @ m.k_proj.weight[qs].t() + m.k_proj.bias[qs],
                ]
            )
            values = torch.cat(
                [
                    enc[:, b] @ m.enc_v_proj.weight[vs].t() + m.enc_v_proj.bias[vs],
                    x[:, b] @ m.v_proj.weight[vs].t() + m.v_proj.bias[vs],
                ]
            )
            scores = q @ keys.t() / math.sqrt(dk)
            visible = torch.cat([(~enc_pad[b]).expand(T, S), causal], dim=1)
            w = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
            weights[h, b] = w
            heads.append(w @ values)
        a = torch.cat(heads, dim=-1)
        u = torch.relu(a + x[:, b] @ m.r_proj.weight.t() + m.r_proj.bias)
        out[:, b] = u @ m.out_proj.weight.t() + m.out_proj.bias
    return out, weights


def test_can_sublayer_equals_the_equations_and_ignores_source_padding():
    torch.manual_seed(0)
    m = CompressedAttention(embed_dim=12, encoder_dim=10, num_heads=3, attention_dim=9, value_dim=15)
    for p in m.parameters():  # biases too, so that every term is checked
        torch.nn.init.normal_(p, std=0.3)
    x, enc = torch.randn(4, 2, 12), torch.randn(5, 2, 10)
    enc_pad = torch.zeros(2, 5, dtype=torch.bool)
    enc_pad[1, :2] = True  # left padding of the second sentence
    future = torch.triu(torch.full((4, 4), float("-inf")), 1)
    out, source_weights = m(x, enc, enc_pad, attn_mask=future, need_head_weights=True)
    ref_out, ref_weights = can_reference(m, x, enc, enc_pad)
    assert (out - ref_out).abs().max().item() < 1e-5
    assert (source_weights - ref_weights[..., :5]).abs().max().item() < 1e-6
    assert (source_weights[:, 1, :, :2] == 0).all() and (source_weights[:, 0] > 0).all()
    with torch.no_grad():  # the padded positions' encoder states do not matter at all
        enc2 = enc.clone()
        enc2[:2, 1] = 100.0
        assert torch.allclose(m(x, enc2, enc_pad, attn_mask=future)[0], out, atol=1e-6)


def test_can_layer_shapes_and_names():
    model = build_model("can", src_vocab=100, tgt_vocab=100, encoder_layers=1)
    assert len(model.decoder.layers) == 2 and model.decoder.layers[0].normalize_before
    names = {n.split(".", 3)[-1] for n, _ in model.decoder.layers.named_parameters()}
    m = model.decoder.layers[0].compressed_attn
    assert m.q_proj.weight.shape == m.k_proj.weight.shape == m.enc_k_proj.weight.shape == (512, 512)
    assert m.v_proj.weight.shape == m.enc_v_proj.weight.shape == m.r_proj.weight.shape == (2048, 512)
    assert m.out_proj.weight.shape == (512, 2048) and m.num_heads == 8 and m.value_head_dim == 256
    assert not [n for n in names if "self_attn" in n or "encoder_attn" in n or "fc1" in n], names
    tiny = build_model("can_mdn", tgt_vocab=100, **SMALL_ENCODER).decoder
    assert len(tiny.layers) == 1 and tiny.layers[0].compressed_attn.num_heads == 1
    assert tiny.layers[0].compressed_attn.q_proj.weight.shape == (64, 512)


# --------------------------------------------------------------------------------------------- SAN

TINY_DIMS = dict(
    encoder_layers=2,
    decoder_layers=3,
    encoder_embed_dim=64,
    encoder_ffn_embed_dim=128,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    dropout=0.1,
)


@pytest.mark.parametrize("prenorm", [False, True])
def test_san_with_blocks_of_one_is_fairseq_transformer(prenorm):
    norm = {"encoder_normalize_before": prenorm, "decoder_normalize_before": prenorm}
    ours = build_model("san", seed=3, san_self_attn_blocks="1,1,1", san_cross_attn_blocks="1,1,1", **TINY_DIMS, **norm)
    theirs = build_model("transformer", seed=4, **TINY_DIMS, **norm)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    ours.load_state_dict(theirs_sd, strict=True)
    src, lengths, prev = random_batch(ours)
    with torch.no_grad():
        assert torch.equal(ours(src, lengths, prev)[0], theirs(src, lengths, prev)[0])
        assert torch.equal(step_by_step(ours, src, lengths, prev), step_by_step(theirs, src, lengths, prev))


def test_san_block_of_two_shares_weights_and_cross_attention():
    """san_tiny: self-attention blocks 1,2 (layer 2 reuses layer 1's weights), cross blocks 2,1 (layer 1
    reuses layer 0's cross-attention output)."""
    model = build_model("san_tiny")
    layers = model.decoder.layers
    names = [n for n, _ in model.decoder.named_parameters()]
    assert isinstance(layers[2].self_attn, SharedWeightsAttention)
    assert not [n for n in names if n.startswith("layers.2.self_attn.") and ("q_proj" in n or "k_proj" in n)]
    assert "layers.2.self_attn.v_proj.weight" in names and "layers.1.self_attn.q_proj.weight" in names
    assert layers[1].encoder_attn is None and not [n for n in names if n.startswith("layers.1.encoder_attn.")]
    assert "layers.1.encoder_attn_layer_norm.weight" in names  # post-norm: the layer still normalises its sum
    seen = {}
    layers[1].self_attn.register_forward_hook(lambda m, a, out: seen.update(w1=out[1]))
    layers[2].self_attn.register_forward_hook(lambda m, a, out: seen.update(w2=a[1], x2=a[0], out2=out))
    layers[0].encoder_attn.register_forward_hook(lambda m, a, kw, out: seen.update(c0=out[0]), with_kwargs=True)
    layers[1].register_forward_pre_hook(lambda m, a, kw: seen.update(c1=kw["cross_out"]), with_kwargs=True)
    src, lengths, prev = random_batch(model)
    with torch.no_grad():
        model(src, lengths, prev)
    assert seen["w1"].shape == (4, 3, 6, 6)  # heads × batch × T × T
    assert torch.equal(seen["w2"], seen["w1"]) and torch.equal(seen["c1"], seen["c0"])
    m2 = layers[2].self_attn  # layer 2 applies the shared weights to its own values
    v = m2.v_proj(seen["x2"]).view(6, 3, 4, 16).permute(1, 2, 0, 3)
    expected = m2.out_proj((seen["w1"].transpose(0, 1) @ v).permute(2, 0, 1, 3).reshape(6, 3, 64))
    assert torch.allclose(seen["out2"], expected, atol=1e-6)


@pytest.mark.parametrize("prenorm", [False, True])
def test_san_every_parameter_is_trained_and_shared_layers_have_no_unused_parts(prenorm):
    model = build_model("san_tiny", decoder_normalize_before=prenorm).train()
    if prenorm:
        assert model.decoder.layers[1].encoder_attn_layer_norm is None  # its output would be unused
    src, lengths, prev = random_batch(model)
    model(src, lengths, prev)[0].logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


# --------------------------------------------------------------------------------------- counts, errors


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_against_transformer_base():
    """aan/san/can at 32K/32K vocabularies, the "+ Ours" archs at 32K/10K, printed against Transformer-base;
    the "+ Ours" encoders follow the paper's param-matching rule (the most layers within Transformer-base)."""
    base = n_params(build_model("transformer", src_vocab=32000, tgt_vocab=32000))
    rows = [("Transformer-base (6+6)", "32K/32K", base)]
    for arch, vocab in (
        ("aan", 32000),
        ("san", 32000),
        ("can", 32000),
        ("mdn", 10000),
        ("aan_mdn", 10000),
        ("can_mdn", 10000),
    ):
        model = build_model(arch, src_vocab=32000, tgt_vocab=vocab)
        count = n_params(model)
        rows.append(
            (f"{arch} ({len(model.encoder.layers)}+{len(model.decoder.layers)})", f"32K/{vocab // 1000}K", count)
        )
        if arch.endswith("_mdn"):
            one_layer = n_params(model.encoder.layers[0])
            assert count <= base < count + one_layer, (arch, count, base)
        del model
    print(
        "\n"
        + "\n".join(f"{name:28s} {vocab:8s} {count / 1e6:7.2f}M  {count / base:.3f}x" for name, vocab, count in rows)
    )
    assert abs(rows[1][2] - base) / base < 0.01  # the gate (2d × 2d) costs what self-attention (4 d²) did


@pytest.mark.parametrize(
    "arch, overrides, message",
    [
        (
            "san_tiny",
            {"san_self_attn_blocks": "1,1"},
            "--san-self-attn-blocks 1,1: the block sizes add up to 2, but the decoder has 3 layers",
        ),
        ("san_tiny", {"san_cross_attn_blocks": "2,0,1"}, "--san-cross-attn-blocks 2,0,1: block sizes must be positive"),
        ("san_tiny", {"san_self_attn_blocks": "4,-1"}, "--san-self-attn-blocks 4,-1: block sizes must be positive"),
        ("san_tiny", {"san_self_attn_blocks": "two"}, "--san-self-attn-blocks 'two': expected comma-separated"),
        ("san_tiny", {"decoder_layerdrop": 0.1}, "--decoder-layerdrop would break the SAN blocks"),
        (
            "can_tiny",
            {"can_value_dim": 130},
            "--can-value-dim 130 must be a positive multiple of --decoder-attention-heads (4)",
        ),
        ("can_tiny", {"can_value_dim": 0}, "--can-value-dim 0 must be a positive multiple"),
        ("can_tiny", {"decoder_attention_dim": 10}, "--decoder-attention-dim (10)"),
        ("aan_tiny", {"aan_ffn": True, "no_decoder_ffn": True}, "--aan-ffn needs an FFN width"),
        ("can_tiny", {"aan_ffn": True}, "--aan-ffn True: --arch can_tiny has no average attention"),
        ("san_tiny", {"no_aan_gating": True}, "--no-aan-gating True: --arch san_tiny has no average attention"),
        ("aan_tiny", {"can_value_dim": 64}, "--can-value-dim 64: --arch aan_tiny has no compressed attention"),
        ("can_mdn", {"san_self_attn_blocks": "1"}, "--san-self-attn-blocks 1: --arch can_mdn has no shared attention"),
        ("can_tiny", {"no_decoder_ffn": True}, "--no-decoder-ffn cannot be used with --arch can_tiny"),
        ("aan_tiny", {"cross_self_attention": True}, "--cross-self-attention is not supported by the AAN decoder"),
        ("can_tiny", {"no_cross_attention": True}, "--no-cross-attention cannot be used with --arch can_tiny"),
        ("san_tiny", {"no_cross_attention": True}, "--san-cross-attn-blocks 2,1: there is no cross-attention"),
    ],
)
def test_bad_input_fails_at_build_naming_flag_value_and_fix(arch, overrides, message):
    with pytest.raises(MDNError) as err:
        build_model(arch, **overrides)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)  # as fairseq's own configuration errors


@pytest.mark.parametrize("arch", ["aan_tiny", "san_tiny", "can_tiny", "aan_mdn", "can_mdn"])
def test_command_line_flags_reach_the_model(arch):
    from fairseq import options
    from fairseq.models import ARCH_MODEL_REGISTRY

    from mdn_fairseq.bench.synthetic import synthetic_task

    flag = {"aan": ["--no-aan-gating"], "san": ["--san-self-attn-blocks", "2,1"], "can": ["--can-value-dim", "32"]}
    extra = (
        flag[arch[:3]]
        + (["--encoder-layers", "1"] if arch.endswith("_mdn") else [])
        + (["--san-cross-attn-blocks", "3"] if arch.startswith("san") else [])
    )
    args = options.parse_args_and_arch(options.get_training_parser(), ["data", "--arch", arch, *extra])
    model = ARCH_MODEL_REGISTRY[arch].build_model(args, synthetic_task(50, 100))
    layer = model.decoder.layers[-1]
    if arch.startswith("aan"):
        assert layer.self_attn.gate is None
    elif arch.startswith("san"):
        assert isinstance(model.decoder.layers[1].self_attn, SharedWeightsAttention)
    else:
        assert layer.compressed_attn.v_proj.weight.shape[0] == 32


def test_peer_flag_on_mdn_is_refused_by_the_parser(capsys):
    from fairseq import options

    with pytest.raises(SystemExit):
        options.parse_args_and_arch(options.get_training_parser(), ["data", "--arch", "mdn_tiny", "--aan-ffn"])
    assert "unrecognized arguments: --aan-ffn" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_peers_train_and_generate_with_fairseq(tmp_path, multi30k):
    """fairseq-train a few updates of each tiny peer on a Multi30k slice, then fairseq-generate with beam 4
    (fairseq's SequenceGenerator: incremental decoding with beam reordering); mdn-san-blocks on a teacher."""
    binarise(tmp_path, multi30k, {"train": ("train", 200), "valid": ("val", 20), "test": ("test_2016_flickr", 8)})
    for arch in ("aan_tiny", "san_tiny", "can_tiny"):
        out = train(
            tmp_path,
            arch,
            arch,
            "--lr",
            "0.002",
            "--max-tokens",
            "2000",
            "--max-update",
            "3",
            "--no-epoch-checkpoints",
            "--disable-validation",
        )
        assert "num_updates 3" in out.replace('"', "").replace(":", ""), out[-2000:]
        gen = run_cli(
            [
                "fairseq-generate",
                "bin",
                "--user-dir",
                USER_DIR,
                "--path",
                f"{arch}/checkpoint_last.pt",
                "--beam",
                "4",
                "--batch-size",
                "8",
                "--max-len-b",
                "10",
                "--required-batch-size-multiple",
                "1",
            ],
            tmp_path,
        ).out
        assert len([line for line in gen.splitlines() if line.startswith("H-")]) == 8, gen[-2000:]
    train(
        tmp_path,
        "mdn_transformer_tiny",
        "teacher",
        "--lr",
        "0.002",
        "--max-tokens",
        "2000",
        "--max-update",
        "3",
        "--no-epoch-checkpoints",
        "--disable-validation",
    )
    out = run_cli(
        [
            "mdn-san-blocks",
            "--path",
            "teacher/checkpoint_last.pt",
            "--data",
            "bin",
            "--sentences",
            "16",
            "--threshold",
            "0.5",
            "--out-json",
            "blocks.json",
        ],
        tmp_path,
    ).out
    assert "self-attention similarity of the decoder layers (16 sentences of valid):" in out
    assert "proposed blocks (threshold 0.5): --san-self-attn-blocks " in out
    result = json.loads((tmp_path / "blocks.json").read_text())
    assert sum(result["self"]["blocks"]) == sum(result["cross"]["blocks"]) == 2
    assert len(result["cross"]["matrix"]) == 2
