"""Weight distillation into the peers (AAN, SAN, CAN and Table 7's aan_mdn, can_mdn) from a Transformer
teacher: what has a counterpart is the teacher's exactly, the rest is reported fresh and left as built."""

import os

import pytest
import torch
from fairseq import checkpoint_utils, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from conftest import build_model, random_batch
from mdn_fairseq.bench.synthetic import synthetic_dictionary
from mdn_fairseq.checkpoint import save_atomically
from mdn_fairseq.distillation.student import student_checkpoint
from mdn_fairseq.distillation.weights import distill_state_dict, svd_factors
from mdn_fairseq.errors import DistillationError

HEAD = 1  # the teacher head narrow students take (not 0, so that a slicing off by one head shows)
TINY = "mdn_transformer_tiny"  # 64 wide, 4 heads of 16, FFN 128, 2+2 layers, post-norm
BASE = "mdn_transformer_base"  # 512 wide, 8 heads of 64
PRENORM = {"encoder_normalize_before": True, "decoder_normalize_before": True}
SMALL_ENCODER = {"encoder_layers": 2, "encoder_ffn_embed_dim": 256}  # paper-dim decoders, cheap encoders
NARROW = {"decoder_attention_heads": 1, "decoder_attention_dim": 16, "no_decoder_ffn": True, "output_rank": 16}
CAN = "compressed_attn"


def per_layer(n, *names):
    """``decoder.layers.{i}.{name}`` for i < n, for each name with both ``.weight`` and ``.bias``."""
    return sorted(f"decoder.layers.{i}.{name}.{p}" for i in range(n) for name in names for p in ("weight", "bias"))


# name: (student arch, its flags, teacher arch, its flags, the fresh parameters, checks)
# a check is (student key, teacher key, how): "=" the same tensor, "rows"/"cols" the head's rows/columns
CASES = {
    "aan_tiny": (
        "aan_tiny", {}, TINY, {}, per_layer(2, "self_attn.gate"),
        [("decoder.layers.1.encoder_attn.q_proj.weight", "decoder.layers.1.encoder_attn.q_proj.weight", "="),
         ("decoder.layers.0.fc1.weight", "decoder.layers.0.fc1.weight", "="),
         ("decoder.layers.0.self_attn_layer_norm.weight", "decoder.layers.0.self_attn_layer_norm.weight", "="),
         ("encoder.layers.1.fc2.weight", "encoder.layers.1.fc2.weight", "="),
         ("decoder.output_projection.weight", "decoder.output_projection.weight", "=")],
    ),
    "aan_tiny-ffn": ("aan_tiny", {"aan_ffn": True}, TINY, {}, per_layer(2, "self_attn.gate", "self_attn.fc1",
                                                                         "self_attn.fc2"), []),
    "aan_tiny-no-gating": ("aan_tiny", {"no_aan_gating": True}, TINY, {}, [], []),
    "aan_mdn": (
        "aan_mdn", SMALL_ENCODER, BASE, {**SMALL_ENCODER, "decoder_layers": 1, "decoder_ffn_embed_dim": 256},
        per_layer(1, "self_attn.gate"),
        [("decoder.layers.0.encoder_attn.k_proj.weight", "decoder.layers.0.encoder_attn.k_proj.weight", "rows"),
         ("decoder.layers.0.encoder_attn.out_proj.weight", "decoder.layers.0.encoder_attn.out_proj.weight", "cols"),
         ("decoder.layers.0.encoder_attn.out_proj.bias", "decoder.layers.0.encoder_attn.out_proj.bias", "="),
         ("decoder.layers.0.encoder_attn_layer_norm.bias", "decoder.layers.0.encoder_attn_layer_norm.bias", "=")],
    ),
    "san_tiny": (  # self blocks 1,2 (layer 2 reuses layer 1's weights), cross blocks 2,1 (layer 1 has none)
        "san_tiny", {}, TINY, {"decoder_layers": 3}, [],
        [("decoder.layers.2.self_attn.v_proj.weight", "decoder.layers.2.self_attn.v_proj.weight", "="),
         ("decoder.layers.2.self_attn.out_proj.bias", "decoder.layers.2.self_attn.out_proj.bias", "="),
         ("decoder.layers.1.self_attn.q_proj.weight", "decoder.layers.1.self_attn.q_proj.weight", "="),
         ("decoder.layers.1.encoder_attn_layer_norm.weight", "decoder.layers.1.encoder_attn_layer_norm.weight", "="),
         ("decoder.layers.2.fc2.bias", "decoder.layers.2.fc2.bias", "=")],
    ),
    "san_tiny-narrow": (
        "san_tiny", NARROW, TINY, {"decoder_layers": 3}, [],
        [("decoder.layers.2.self_attn.v_proj.weight", "decoder.layers.2.self_attn.v_proj.weight", "rows"),
         ("decoder.layers.2.self_attn.v_proj.bias", "decoder.layers.2.self_attn.v_proj.bias", "rows"),
         ("decoder.layers.2.self_attn.out_proj.weight", "decoder.layers.2.self_attn.out_proj.weight", "cols"),
         ("decoder.layers.1.self_attn.q_proj.weight", "decoder.layers.1.self_attn.q_proj.weight", "rows")],
    ),
    "can_tiny": (  # values 128 wide = the FFN's width: W_r, W_o <- fc1, fc2; the values have no counterpart
        "can_tiny", {}, TINY, PRENORM, per_layer(2, f"{CAN}.v_proj", f"{CAN}.enc_v_proj"),
        [(f"decoder.layers.0.{CAN}.q_proj.weight", "decoder.layers.0.encoder_attn.q_proj.weight", "="),
         (f"decoder.layers.0.{CAN}.enc_k_proj.bias", "decoder.layers.0.encoder_attn.k_proj.bias", "="),
         (f"decoder.layers.1.{CAN}.k_proj.weight", "decoder.layers.1.self_attn.k_proj.weight", "="),
         (f"decoder.layers.1.{CAN}.r_proj.weight", "decoder.layers.1.fc1.weight", "="),
         (f"decoder.layers.0.{CAN}.out_proj.weight", "decoder.layers.0.fc2.weight", "="),
         (f"decoder.layers.0.{CAN}.out_proj.bias", "decoder.layers.0.fc2.bias", "="),
         ("decoder.layers.1.layer_norm.weight", "decoder.layers.1.self_attn_layer_norm.weight", "="),
         ("decoder.layer_norm.bias", "decoder.layer_norm.bias", "="),
         ("encoder.layer_norm.weight", "encoder.layer_norm.weight", "=")],
    ),
    "can_tiny-postnorm": (
        "can_tiny", {"encoder_normalize_before": False, "decoder_normalize_before": False}, TINY, {},
        per_layer(2, f"{CAN}.v_proj", f"{CAN}.enc_v_proj"),
        [("decoder.layers.0.layer_norm.weight", "decoder.layers.0.final_layer_norm.weight", "=")],
    ),
    "can_mdn": (  # one head of 64, values 64 wide: the values are a teacher head's, W_o its output columns
        "can_mdn", SMALL_ENCODER, BASE,
        {**SMALL_ENCODER, **PRENORM, "decoder_layers": 1, "decoder_ffn_embed_dim": 256}, per_layer(1, f"{CAN}.r_proj"),
        [(f"decoder.layers.0.{CAN}.q_proj.weight", "decoder.layers.0.encoder_attn.q_proj.weight", "rows"),
         (f"decoder.layers.0.{CAN}.enc_v_proj.weight", "decoder.layers.0.encoder_attn.v_proj.weight", "rows"),
         (f"decoder.layers.0.{CAN}.k_proj.bias", "decoder.layers.0.self_attn.k_proj.bias", "rows"),
         (f"decoder.layers.0.{CAN}.v_proj.weight", "decoder.layers.0.self_attn.v_proj.weight", "rows"),
         (f"decoder.layers.0.{CAN}.out_proj.weight", "decoder.layers.0.encoder_attn.out_proj.weight", "cols"),
         (f"decoder.layers.0.{CAN}.out_proj.bias", "decoder.layers.0.encoder_attn.out_proj.bias", "=")],
    ),
}  # fmt: skip


def randomise(model, seed=7):
    """Every parameter (layer norms too) drawn at random, so that a copied value cannot pass for an initial one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def distil(teacher, student, head=HEAD):
    sd, mapping = distill_state_dict(
        teacher.state_dict(), student.state_dict(), teacher.decoder.layers[0].self_attn.num_heads, head
    )
    student.load_state_dict(sd, strict=True)
    return mapping


def expected(teacher_value, how, head_dim):
    rows = slice(HEAD * head_dim, (HEAD + 1) * head_dim)
    if how == "=":
        return teacher_value
    return teacher_value[rows] if how == "rows" else teacher_value[:, rows]


@pytest.mark.parametrize("case", sorted(CASES))
def test_peer_student_takes_what_has_a_counterpart_and_reports_the_rest(case):
    arch, flags, teacher_arch, teacher_flags, fresh, checks = CASES[case]
    teacher = randomise(build_model(teacher_arch, seed=1, tgt_vocab=100, **teacher_flags))
    student = build_model(arch, seed=2, tgt_vocab=100, **flags)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    mapping = distil(teacher, student)
    after, t_sd = student.state_dict(), teacher.state_dict()
    assert sorted(mapping.fresh) == fresh
    if fresh:
        assert f"student parameters kept as initialised: {', '.join(mapping.fresh)}" in mapping.lines()
    for key, value in after.items():
        if key.endswith("version"):
            continue
        kept = torch.equal(value, before[key])
        assert kept == (key in fresh), f"{key}: {'kept as built' if kept else 'changed'}"
    head_dim = teacher.decoder.layers[0].self_attn.head_dim
    for ours, theirs, how in checks:
        assert torch.equal(after[ours], expected(t_sd[theirs], how, head_dim)), (ours, theirs, how)
    if any(how != "=" for _, _, how in checks):
        assert mapping.heads and all(h == [HEAD] for h in mapping.heads.values())


@pytest.mark.parametrize("case", ["aan_mdn", "can_mdn"])
def test_plus_ours_students_get_the_teachers_rank_64_output_factors(case):
    arch, flags, teacher_arch, teacher_flags, _, _ = CASES[case]
    teacher = randomise(build_model(teacher_arch, seed=1, tgt_vocab=100, **teacher_flags))
    student = build_model(arch, seed=2, tgt_vocab=100, **flags)
    mapping = distil(teacher, student)
    factors = svd_factors(teacher.decoder.output_projection.weight.detach(), 64)
    assert torch.equal(student.decoder.output_projection.A.weight, factors.A)
    assert mapping.svd.rank == 64 and 0 < mapping.energy < 1
    heads = "0.encoder_attn heads [1]" if arch == "aan_mdn" else "0.compressed_attn heads [1]"
    assert f"decoder layer 0 <- teacher decoder layer 0 ({heads})" in mapping.lines()


@pytest.mark.parametrize(
    "arch, teacher_flags, fresh_kinds",
    [
        ("aan", {"encoder_layers": 1}, {"self_attn.gate"}),
        ("san", {"encoder_layers": 1}, set()),
        ("can", {"encoder_layers": 1, "decoder_layers": 2, **PRENORM}, {f"{CAN}.v_proj", f"{CAN}.enc_v_proj"}),
    ],
)
def test_paper_dim_peers_initialise_from_transformer_base(arch, teacher_flags, fresh_kinds):
    """aan, san, can at the paper's dims (one encoder layer, to keep it quick) from a Transformer-base teacher."""
    teacher = build_model(BASE, seed=1, src_vocab=30, tgt_vocab=30, **teacher_flags)
    student = build_model(arch, seed=2, src_vocab=30, tgt_vocab=30, encoder_layers=1)
    mapping = distil(teacher, student)
    n = len(student.decoder.layers)
    assert sorted(mapping.fresh) == per_layer(n, *fresh_kinds)


@pytest.mark.parametrize("prenorm", [False, True])
def test_san_with_blocks_of_one_reproduces_the_teacher(prenorm):
    """All blocks of size 1 at the teacher's dims: the same model, the same logits, bit for bit."""
    norm = {"encoder_normalize_before": prenorm, "decoder_normalize_before": prenorm}
    teacher = randomise(build_model(TINY, seed=1, decoder_layers=3, **norm))
    student = build_model("san_tiny", seed=2, san_self_attn_blocks="1,1,1", san_cross_attn_blocks="1,1,1", **norm)
    src, lengths, prev = random_batch(teacher)
    with torch.no_grad():
        assert not torch.equal(teacher(src, lengths, prev)[0], student(src, lengths, prev)[0])
        mapping = distil(teacher, student)
        assert mapping.fresh == [] and mapping.dropped == []
        assert torch.equal(teacher(src, lengths, prev)[0], student(src, lengths, prev)[0])


@pytest.mark.parametrize(
    "arch, teacher_flags, flags, message",
    [
        ("san_tiny", {}, {}, "the student has 3 decoder layers, more than the teacher's 2"),
        ("can_tiny", {}, {"decoder_attention_heads": 2, "decoder_attention_dim": 24},
         r"decoder attention dim \(24\) is not a whole number of the teacher's 16-dim heads \(4 heads of 16\)"),
        ("aan_tiny", {}, {"encoder_embed_dim": 32, "decoder_embed_dim": 32, "decoder_ffn_embed_dim": 64},
         "embed dims differ: teacher encoder.embed_tokens.weight is 64-wide, student's 32-wide"),
    ],
)  # fmt: skip
def test_mismatched_peer_students_fail_naming_both_values(arch, teacher_flags, flags, message):
    teacher = build_model(TINY, seed=1, **teacher_flags)
    with pytest.raises(DistillationError, match=message):
        distil(teacher, build_model(arch, seed=2, **flags))


# -- mdn-init --arch aan_tiny, in this process -----------------------------------------------------------


@pytest.fixture
def teacher_checkpoint(tmp_path):
    """``tmp_path/bin`` (dictionaries only, en 50 / de 60 symbols) and ``tmp_path/teacher.pt``: a random
    ``mdn_transformer_tiny`` saved as fairseq-train would, with its task settings."""
    data = tmp_path / "bin"
    data.mkdir()
    synthetic_dictionary(50).save(str(data / "dict.en.txt"))
    synthetic_dictionary(60).save(str(data / "dict.de.txt"))
    argv = [str(data), "--task", "translation", "-s", "en", "-t", "de", "--arch", TINY]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    torch.manual_seed(1)
    teacher = tasks.setup_task(cfg.task).build_model(cfg.model)
    save_atomically(student_checkpoint(randomise(teacher), cfg), tmp_path / "teacher.pt")
    return tmp_path, teacher


def test_mdn_init_aan_tiny_writes_a_loadable_student_and_prints_the_fresh_list(teacher_checkpoint, capsys):
    from mdn_fairseq.cli import init

    work, teacher = teacher_checkpoint
    out_path = work / "student.pt"
    init.main(["--teacher", str(work / "teacher.pt"), "--arch", "aan_tiny", "--out", str(out_path)])
    out = capsys.readouterr().out
    fresh = ", ".join(f"decoder.layers.{i}.self_attn.gate.{p}" for i in range(2) for p in ("weight", "bias"))
    assert f"  student parameters kept as initialised: {fresh}" in out.splitlines()
    assert "decoder layer 1 <- teacher decoder layer 1" in out and f"wrote {out_path}" in out
    assert sorted(os.listdir(work)) == ["bin", "student.pt", "teacher.pt"]
    (student,), cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(out_path)])
    assert cfg.model.arch == "aan_tiny" and type(student).__name__ == "AANModel"
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    for key in ("encoder.layers.1.self_attn.k_proj.weight", "decoder.layers.0.encoder_attn.v_proj.bias",
                "decoder.layers.1.final_layer_norm.weight", "decoder.output_projection.weight"):  # fmt: skip
        assert torch.equal(s_sd[key], t_sd[key]), key
    src, lengths, prev = random_batch(student)
    with torch.no_grad():
        assert torch.isfinite(student.eval()(src, lengths, prev)[0]).all()
