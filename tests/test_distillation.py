"""Weight distillation is exact; KD behaves; the teacher stays out of the student's way."""

import copy

import pytest
import torch

from conftest import FakeTask, build_model, random_batch
from mdn_fairseq.criterions import kd_loss
from mdn_fairseq.weight_distillation import distill_state_dict, extract_heads, round_robin, svd_factors


def logits(model, seed=1):
    src, lengths, prev = random_batch(model, seed=seed)
    with torch.no_grad():
        return model(src, lengths, prev)[0]


def init_from(teacher, student, head=0):
    sd, mapping = distill_state_dict(teacher.state_dict(), student.state_dict(),
                                     teacher.decoder.layers[0].self_attn.num_heads, head)
    student.load_state_dict(sd, strict=True)
    return mapping


@pytest.mark.parametrize("prenorm", [False, True])
def test_same_architecture_student_reproduces_teacher(prenorm):
    norm = {"encoder_normalize_before": prenorm, "decoder_normalize_before": prenorm}
    teacher = build_model("mdn_transformer_tiny", seed=1, **norm)
    student = build_model("mdn_transformer_tiny", seed=2, **norm)
    assert not torch.equal(logits(teacher), logits(student))
    init_from(teacher, student)
    assert torch.equal(logits(teacher), logits(student))


@pytest.mark.parametrize("shared", [False, True])
def test_full_rank_svd_reproduces_teacher_logits(shared):
    teacher = build_model("mdn_transformer_tiny", seed=1, share_decoder_input_output_embed=shared)
    student = build_model("mdn_transformer_tiny", seed=2, output_rank=60)  # min(V=60, H=64)
    mapping = init_from(teacher, student)
    assert (logits(teacher) - logits(student)).abs().max().item() < 1e-4
    assert mapping.energy == pytest.approx(1.0)


def test_rank_e_factors_are_the_best_rank_e_approximation():
    torch.manual_seed(0)
    W = torch.randn(50, 20, dtype=torch.float64)
    f = svd_factors(W, 5)
    assert f.A.shape == (50, 5) and f.B.shape == (20, 5)
    err2 = ((W - f.A @ f.B.t()) ** 2).sum().item()
    assert err2 == pytest.approx((f.singular_values[5:] ** 2).sum().item(), rel=1e-9)
    assert f.energy == pytest.approx(1 - err2 / (W**2).sum().item(), rel=1e-9)
    with pytest.raises(ValueError, match=r"min\(V=50, H=20\) = 20"):
        svd_factors(W, 21)


@pytest.mark.parametrize("head", [0, 2, 3])
def test_head_extraction_is_exact(head):
    """A teacher whose decoder out-projections are zero outside head h equals the single-head student."""
    teacher = build_model("mdn_transformer_tiny", seed=1)
    with torch.no_grad():
        for layer in teacher.decoder.layers:
            for attn in (layer.self_attn, layer.encoder_attn):
                w = attn.out_proj.weight
                keep = torch.zeros(w.shape[1], dtype=torch.bool)
                keep[head * 16 : (head + 1) * 16] = True
                w[:, ~keep] = 0
    student = build_model("mdn_transformer_tiny", seed=2, decoder_attention_heads=1, decoder_attention_dim=16)
    mapping = init_from(teacher, student, head=head)
    assert mapping.heads["0.self_attn"] == [head] and mapping.heads["1.encoder_attn"] == [head]
    assert (logits(teacher) - logits(student)).abs().max().item() < 1e-5


def test_extract_heads_slices():
    attn = {"q_proj.weight": torch.arange(32.0).view(8, 4), "q_proj.bias": torch.arange(8.0),
            "out_proj.weight": torch.arange(32.0).view(4, 8), "out_proj.bias": torch.ones(4)}
    out = extract_heads(attn, [1], head_dim=2)
    assert torch.equal(out["q_proj.weight"], attn["q_proj.weight"][2:4])
    assert torch.equal(out["q_proj.bias"], attn["q_proj.bias"][2:4])
    assert torch.equal(out["out_proj.weight"], attn["out_proj.weight"][:, 2:4])
    assert torch.equal(out["out_proj.bias"], attn["out_proj.bias"])


def test_round_robin_encoder_layers_by_tensor_identity():
    teacher = build_model("mdn_transformer_tiny", seed=1, encoder_layers=3)
    student = build_model("mdn_tiny", seed=2, encoder_layers=7, tgt_vocab=60)
    mapping = init_from(teacher, student)
    assert mapping.encoder_layers == round_robin(7, 3) == [0, 1, 2, 0, 1, 2, 0]
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for i in range(7):
        for name, value in s_sd.items():
            prefix = f"encoder.layers.{i}."
            if name.startswith(prefix):
                assert torch.equal(value, t_sd[f"encoder.layers.{i % 3}." + name[len(prefix):]]), name
    assert torch.equal(s_sd["encoder.embed_tokens.weight"], t_sd["encoder.embed_tokens.weight"])
    assert torch.equal(s_sd["decoder.embed_tokens.weight"], t_sd["decoder.embed_tokens.weight"])
    assert any("fc1" in k for k in mapping.dropped)  # the decoder FFN went nowhere
    text = "\n".join(mapping.lines())
    assert "encoder layer 6 <- teacher encoder layer 0" in text and "rank-16 SVD" in text


def test_mdn_tiny_student_differs_from_teacher_but_initialises():
    teacher = build_model("mdn_transformer_tiny", seed=1)
    student = build_model("mdn_tiny", seed=2, tgt_vocab=60)
    mapping = init_from(teacher, student, head=1)
    assert 0 < mapping.energy < 1
    assert torch.isfinite(logits(student)).all()


@pytest.mark.parametrize(
    "student_overrides, message",
    [
        ({"encoder_embed_dim": 32, "decoder_embed_dim": 32}, "embed dims differ"),
        ({"decoder_layers": 3}, "3 decoder layers, more than the teacher's 2"),
    ],
)
def test_unmappable_pairs_fail_naming_both_values(student_overrides, message):
    teacher = build_model("mdn_transformer_tiny", seed=1)
    student = build_model("mdn_transformer_tiny", seed=2, **student_overrides)
    with pytest.raises(ValueError, match=message):
        init_from(teacher, student)


def test_different_dictionaries_fail():
    teacher = build_model("mdn_transformer_tiny", seed=1, tgt_vocab=60)
    student = build_model("mdn_tiny", seed=2, tgt_vocab=70)
    with pytest.raises(ValueError, match="target dictionary has 60 entries, the student's 70"):
        init_from(teacher, student)


def test_kd_term_is_zero_for_the_same_model():
    model = build_model("mdn_tiny", tgt_vocab=60)
    out = logits(model)
    mask = torch.ones(out.shape[:2])
    for temperature in (1.0, 2.0):
        assert kd_loss(out, out.clone(), mask, temperature).abs().item() < 1e-6
    assert kd_loss(out, torch.zeros_like(out), mask).item() > 0.0
    # top-k: k = V is the full distribution
    assert kd_loss(out, out.clone(), mask, 1.0, topk=60).abs().item() < 1e-6


def test_kd_criterion_same_teacher_gives_nll_only():
    from mdn_fairseq.criterions import KDCrossEntropyCriterion

    student = build_model("mdn_tiny", tgt_vocab=60)
    task = FakeTask(50, 60)
    task.teacher = copy.deepcopy(student)
    task.teacher_for = lambda model: task.teacher
    crit = KDCrossEntropyCriterion(task, kd_alpha=0.5, kd_temperature=1.0, kd_topk=0, label_smoothing=0.0,
                                   sentence_avg=False)
    src, lengths, prev = random_batch(student)
    target = torch.cat([prev[:, 1:], prev.new_full((prev.size(0), 1), 2)], dim=1)
    sample = {"net_input": {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev},
              "target": target, "ntokens": target.numel()}
    loss, _, log = crit(student, sample)
    assert log["kd_loss"].abs().item() < 1e-5
    assert loss.item() == pytest.approx(0.5 * log["nll_loss"].item(), rel=1e-5)


def test_kd_criterion_without_teacher_is_refused():
    from mdn_fairseq.criterions import KDCrossEntropyCriterion

    with pytest.raises(ValueError, match="--task translation_wd --teacher-path"):
        KDCrossEntropyCriterion(FakeTask(50, 60), 0.5, 1.0, 0, 0.0, False)
