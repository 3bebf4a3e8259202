"""The MDN architecture: each trick alone, exactness of incremental decoding, shapes, counts."""

import pytest
import torch

from conftest import USER_DIR, build_model, random_batch, run_cli
from mdn_fairseq.errors import ArchitectureError
from mdn_fairseq.modules import LowRankLinear, NarrowMultiheadAttention

# Each of the paper's structure tricks switched on alone (tiny dims: 64 wide, 4 heads of 16).
TRICKS = {
    "tricks-off": {},
    "shallow-decoder": {"decoder_layers": 1, "encoder_layers": 4},
    "single-head": {"decoder_attention_heads": 1, "decoder_attention_dim": 16},
    "no-ffn": {"no_decoder_ffn": True},
    "low-rank-output": {"output_rank": 16},
    "decoder-dropout": {"decoder_dropout": 0.0},
}


def incremental_vs_full(model, seed=1):
    src, lengths, prev = random_batch(model, seed=seed)
    with torch.no_grad():
        full, _ = model(src, lengths, prev)
        enc = model.encoder(src, src_lengths=lengths)
        state = {}
        steps = []
        for t in range(prev.size(1)):
            out, _ = model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)
            steps.append(out[:, -1])
    return (full - torch.stack(steps, dim=1)).abs().max().item()


@pytest.mark.parametrize("trick", sorted(TRICKS))
@pytest.mark.parametrize("prenorm", [False, True])
def test_incremental_decoding_equals_full_forward_each_trick(trick, prenorm):
    norm = {"encoder_normalize_before": prenorm, "decoder_normalize_before": prenorm}
    model = build_model("mdn_transformer_tiny", **TRICKS[trick], **norm)
    assert incremental_vs_full(model) < 1e-5


@pytest.mark.parametrize("arch", ["mdn_tiny", "mdn_wmt_en_de"])
def test_incremental_decoding_equals_full_forward_mdn(arch):
    small = {} if arch == "mdn_tiny" else {"encoder_layers": 2, "encoder_ffn_embed_dim": 256}
    model = build_model(arch, tgt_vocab=100, **small)
    assert incremental_vs_full(model) < 1e-5


def test_incremental_decoding_with_beam_reordering():
    """fairseq's reorder_incremental_state on the narrow attention keeps decoding exact.
    Two beams of one sentence (same source, different prefixes) swap places, as in beam search."""
    model = build_model("mdn_tiny")
    src, lengths, prev = random_batch(model, bsz=2)
    src, lengths = src[[1, 1]], lengths[[1, 1]]
    order = torch.tensor([1, 0])
    with torch.no_grad():
        enc = model.encoder(src, src_lengths=lengths)
        state = {}
        for t in (1, 2):
            model.decoder(prev[:, :t], encoder_out=enc, incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, order)
        enc_r = model.encoder.reorder_encoder_out(enc, order)
        out, _ = model.decoder(prev[order, :3], encoder_out=enc_r, incremental_state=state)
        full, _ = model.decoder(prev[order, :3], encoder_out=enc_r)
    assert (out[:, -1] - full[:, -1]).abs().max().item() < 1e-5


def test_mdn_shapes():
    model = build_model("mdn", src_vocab=300, tgt_vocab=200)
    dec = model.decoder
    assert len(model.encoder.layers) == 22 and len(dec.layers) == 1
    layer = dec.layers[0]
    names = [n for n, _ in dec.named_parameters()]
    assert not [n for n in names if "fc1" in n or "fc2" in n or "final_layer_norm" in n], names
    for attn in (layer.self_attn, layer.encoder_attn):
        assert isinstance(attn, NarrowMultiheadAttention) and attn.num_heads == 1
        assert attn.q_proj.weight.shape == (64, 512)
        assert attn.k_proj.weight.shape == (64, 512)
        assert attn.v_proj.weight.shape == (64, 512)
        assert attn.out_proj.weight.shape == (512, 64)
    out = dec.output_projection
    assert isinstance(out, LowRankLinear)
    assert out.A.weight.shape == (200, 64)  # A: V×E
    assert out.B.weight.shape == (64, 512)  # Bᵀ: E×H
    assert "decoder.output_projection.weight" not in model.state_dict()


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_mdn_param_count_matches_transformer_base():
    """22+1 MDN with 32K source / 10K target vocab is param-matched to Transformer-base 32K/32K."""
    mdn = n_params(build_model("mdn", src_vocab=32000, tgt_vocab=10000))
    base = n_params(build_model("transformer", src_vocab=32000, tgt_vocab=32000))
    print(f"\n#params Transformer-base (32K/32K): {base:,}   MDN (32K/10K): {mdn:,}   ratio {mdn / base:.3f}")
    assert abs(mdn - base) / base < 0.05


def test_tricks_off_is_fairseq_transformer():
    dims = dict(
        encoder_layers=2,
        decoder_layers=2,
        encoder_embed_dim=64,
        encoder_ffn_embed_dim=128,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        dropout=0.1,
    )
    ours = build_model("mdn_transformer_base", seed=3, **dims)
    theirs = build_model("transformer", seed=4, **dims)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    assert all(ours_sd[k].shape == theirs_sd[k].shape for k in ours_sd)
    assert n_params(ours) == n_params(theirs)
    ours.load_state_dict(theirs_sd, strict=True)
    src, lengths, prev = random_batch(ours)
    with torch.no_grad():
        assert torch.equal(ours(src, lengths, prev)[0], theirs(src, lengths, prev)[0])


def test_decoder_dropout_is_decoder_only():
    model = build_model("mdn_tiny", dropout=0.3, decoder_dropout=0.0)
    assert model.encoder.dropout_module.p == 0.3
    assert model.decoder.dropout_module.p == 0.0
    assert model.decoder.layers[0].dropout_module.p == 0.0
    assert model.cfg.dropout == 0.3


def test_low_rank_full_weight():
    layer = LowRankLinear(8, 10, 3)
    x = torch.randn(4, 8)
    assert torch.allclose(layer(x), x @ layer.full_weight().t(), atol=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"output_rank": -1}, "--output-rank"),
        ({"output_rank": 65}, "--output-rank"),  # > min(V=60, H=64)
        ({"decoder_attention_dim": 10, "decoder_attention_heads": 4}, "--decoder-attention-dim (10)"),
        ({"decoder_attention_dim": 0}, "--decoder-attention-dim"),
        ({"no_decoder_ffn": True, "decoder_ffn_embed_dim": 128}, "--decoder-ffn-embed-dim (128)"),
        ({"output_rank": 8, "share_decoder_input_output_embed": True}, "--share-decoder-input-output-embed"),
        ({"decoder_dropout": 1.5}, "--decoder-dropout"),
    ],
)
def test_impossible_configs_fail_at_build_naming_the_flag(overrides, message):
    with pytest.raises(ArchitectureError) as err:  # an MDNError and a ValueError
        build_model("mdn_transformer_tiny", **overrides)
    assert message in str(err.value)


def test_output_rank_error_names_allowed_range():
    with pytest.raises(ValueError, match=r"min\(V=60, H=64\) = 60; got 61"):
        build_model("mdn_tiny", output_rank=61)


def test_unknown_arch_is_refused_with_choices(capsys):
    from fairseq import options

    parser = options.get_training_parser()
    with pytest.raises(SystemExit):
        options.parse_args_and_arch(parser, ["data", "--arch", "mdn_nonexistent"])
    err = capsys.readouterr().err
    assert "--arch" in err and "invalid choice: 'mdn_nonexistent'" in err and "mdn_tiny" in err


def legacy_state_dict(model):
    """``model``'s state dict as plugin 0.1.0 wrote it: the low-rank factors as ``down`` (Bᵀ) / ``up`` (A),
    no version buffer."""
    sd = dict(model.state_dict())
    sd["decoder.output_projection.down.weight"] = sd.pop("decoder.output_projection.B.weight")
    sd["decoder.output_projection.up.weight"] = sd.pop("decoder.output_projection.A.weight")
    del sd["decoder.output_projection.version"]
    return sd


def test_state_dict_of_plugin_0_1_loads_after_the_rename():
    old = build_model("mdn_tiny", seed=1)
    new = build_model("mdn_tiny", seed=2)
    sd = legacy_state_dict(old)
    assert "decoder.output_projection.up.weight" in sd
    new.load_state_dict(sd, strict=True)  # fairseq's load_state_dict upgrades by name first
    assert torch.equal(new.state_dict()["decoder.output_projection.A.weight"], old.decoder.output_projection.A.weight)
    assert new.state_dict()["decoder.output_projection.version"].item() == LowRankLinear.VERSION == 2
    src, lengths, prev = random_batch(old)
    with torch.no_grad():
        assert torch.equal(new(src, lengths, prev)[0], old(src, lengths, prev)[0])


def test_upgrade_by_name_under_a_prefix_and_current_state_dicts_untouched():
    model = build_model("mdn_tiny")
    nested = {f"models.0.{k}": v for k, v in legacy_state_dict(model).items()}
    model.upgrade_state_dict_named(nested, "models.0")
    assert sorted(nested) == sorted(f"models.0.{k}" for k in model.state_dict())
    current = dict(model.state_dict())
    model.upgrade_state_dict(current)
    assert current.keys() == model.state_dict().keys()
    assert all(torch.equal(current[k], v) for k, v in model.state_dict().items())


def test_tricks_off_model_has_no_mdn_version():
    """Without a low-rank output layer the state dict is fairseq's Transformer's, key for key."""
    assert not any("output_projection.version" in k for k in build_model("mdn_transformer_tiny").state_dict())


def test_fairseq_train_reports_a_bad_flag_in_one_line(tmp_path):
    """fairseq builds the model outside the plugin's CLIs: an impossible combination still ends in one line
    naming the flag (the plugin's excepthook), not a traceback; the exit status is 1."""
    for lang in ("en", "de"):
        (tmp_path / f"dict.{lang}.txt").write_text("".join(f"w{i} 1\n" for i in range(20)), encoding="utf-8")
    cmd = ["fairseq-train", str(tmp_path), "--user-dir", USER_DIR, "--arch", "san_tiny", "-s", "en", "-t", "de",
           "--san-self-attn-blocks", "1,1", "--cpu", "--optimizer", "adam", "--max-tokens", "500", "--save-dir", str(tmp_path / "ck")]  # fmt: skip
    proc = run_cli(cmd, tmp_path, ok=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.out[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fairseq-train: ArchitectureError: --san-self-attn-blocks 1,1"), last
