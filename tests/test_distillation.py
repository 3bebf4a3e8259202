"""Weight distillation is exact; the head choices pick what they say; KD behaves."""

import copy
import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.logging import metrics
from omegaconf import OmegaConf

from conftest import build_model, random_batch
from mdn_fairseq.criterions import KDCrossEntropyCriterion, kd_loss
from mdn_fairseq.criterions.kd_cross_entropy import KDCrossEntropyConfig
from mdn_fairseq.distillation.heads import WDHeadConfig, choose_head, head_losses, upgrade_legacy_task_cfg
from mdn_fairseq.distillation.weights import distill_state_dict, extract_heads, round_robin, svd_factors
from mdn_fairseq.errors import DistillationError, MDNError


def logits(model, seed=1):
    src, lengths, prev = random_batch(model, seed=seed)
    with torch.no_grad():
        return model(src, lengths, prev)[0]


def init_from(teacher, student, head=0):
    sd, mapping = distill_state_dict(
        teacher.state_dict(), student.state_dict(), teacher.decoder.layers[0].self_attn.num_heads, head
    )
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
    with pytest.raises(DistillationError, match=r"min\(V=50, H=20\) = 20"):
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
    attn = {
        "q_proj.weight": torch.arange(32.0).view(8, 4),
        "q_proj.bias": torch.arange(8.0),
        "out_proj.weight": torch.arange(32.0).view(4, 8),
        "out_proj.bias": torch.ones(4),
    }
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
                assert torch.equal(value, t_sd[f"encoder.layers.{i % 3}." + name[len(prefix) :]]), name
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
    with pytest.raises(DistillationError, match=message):
        init_from(teacher, student)


def test_different_dictionaries_fail():
    teacher = build_model("mdn_transformer_tiny", seed=1, tgt_vocab=60)
    student = build_model("mdn_tiny", seed=2, tgt_vocab=70)
    with pytest.raises(DistillationError, match="target dictionary has 60 entries, the student's 70"):
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


def test_student_params_the_teacher_cannot_fill_are_kept_and_reported():
    """A student part of its own (as the peers' decoder layers will have) keeps its initialisation and is
    listed; everything else is still mapped."""
    teacher = build_model("mdn_transformer_tiny", seed=1)
    student_sd = build_model("mdn_tiny", seed=2, tgt_vocab=60).state_dict()
    own = torch.randn(16, 64)
    student_sd["decoder.layers.0.gate.weight"] = own
    sd, mapping = distill_state_dict(teacher.state_dict(), student_sd, 4, 0)
    assert list(sd) == list(student_sd)
    assert mapping.fresh == ["decoder.layers.0.gate.weight"] and torch.equal(sd["decoder.layers.0.gate.weight"], own)
    assert "student parameters kept as initialised: decoder.layers.0.gate.weight" in mapping.lines()
    assert torch.equal(sd["encoder.layers.3.fc1.weight"], teacher.state_dict()["encoder.layers.1.fc1.weight"])


# -- which teacher head (--wd-head) -------------------------------------------------------------


def head_cfg(**overrides):
    cfg = WDHeadConfig()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def test_head_index_and_random_choices():
    assert choose_head(head_cfg(), 4).head == 0
    assert choose_head(head_cfg(wd_head_index=3), 4).head == 3
    for seed in (1, 3, 7):
        expected = random.Random(seed).randrange(8)
        assert choose_head(head_cfg(wd_head="random", wd_head_seed=seed), 8).head == expected
    # the seed matters: seeds 0, 1 and 2 draw three different heads of 4, so an ignored seed is caught
    picks = {seed: choose_head(head_cfg(wd_head="random", wd_head_seed=seed), 4).head for seed in (0, 1, 2)}
    assert picks == {seed: random.Random(seed).randrange(4) for seed in (0, 1, 2)} and len(set(picks.values())) == 3
    with pytest.raises(
        DistillationError, match=r"--wd-head-index 4: the teacher's decoder has 4 heads, pick one of 0..3"
    ):
        choose_head(head_cfg(wd_head_index=4), 4)


def test_head_best_picks_the_lowest_loss():
    choice = choose_head(head_cfg(wd_head="best"), 4, score=lambda: [2.5, 1.25, 0.75, 3.0])
    assert choice.head == 2 and choice.losses == [2.5, 1.25, 0.75, 3.0]
    assert choice.describe() == (
        "--wd-head best: teacher head losses (nats/token): 0: 2.5000, 1: 1.2500, 2: 0.7500, 3: 3.0000 -> head 2"
    )
    with pytest.raises(DistillationError, match="validation data"):
        choose_head(head_cfg(wd_head="best"), 4)


@pytest.mark.parametrize(
    "old, new",
    [
        ("index:2", {"wd_head": "index", "wd_head_index": 2}),
        ("random:7", {"wd_head": "random", "wd_head_seed": 7}),
        ("random", {"wd_head": "random"}),
        ("best", {"wd_head": "best"}),
    ],
)
def test_task_configs_of_plugin_0_1_are_upgraded(old, new):
    """Checkpoints saved before --wd-head became a ChoiceEnum hold ``index:K``/``random:SEED``; on load the
    value becomes the new flags (as fairseq then merges it into the task's dataclass)."""
    from fairseq.dataclass.utils import merge_with_parent

    from mdn_fairseq.tasks.translation_wd import TranslationWDConfig

    state = {"cfg": OmegaConf.create({"task": {"_name": "translation_wd", "data": "bin", "wd_head": old}})}
    upgrade_legacy_task_cfg(state)
    assert {k: state["cfg"]["task"][k] for k in new} == new
    merged = merge_with_parent(TranslationWDConfig(), state["cfg"]["task"], remove_missing=True)
    assert str(merged.wd_head) == new["wd_head"]
    assert merged.wd_head_index == new.get("wd_head_index", 0) and merged.wd_head_seed == new.get("wd_head_seed", 1)


def test_head_losses_are_the_single_head_teachers_nll():
    """Each score is the NLL of a teacher whose decoder attentions keep only that head, computed here by
    zeroing the other heads' columns by hand; the teacher comes back unchanged."""
    teacher = build_model("mdn_transformer_tiny", seed=1)
    src, lengths, prev = random_batch(teacher)
    target = torch.cat([prev[:, 1:], prev.new_full((prev.size(0), 1), 2)], dim=1)
    target[0, -2:] = 1  # padding
    net_input = {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev}
    before = copy.deepcopy(teacher.state_dict())
    losses = head_losses(teacher, net_input, target, pad=1, n_layers=1)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    expected = []
    for h in range(4):
        single = copy.deepcopy(teacher)
        for attn in (single.decoder.layers[0].self_attn, single.decoder.layers[0].encoder_attn):
            with torch.no_grad():
                cols = torch.ones(64, dtype=torch.bool)
                cols[h * 16 : (h + 1) * 16] = False
                attn.out_proj.weight[:, cols] = 0
        with torch.no_grad():
            logits = single(**net_input)[0]
        expected.append(F.cross_entropy(logits.transpose(1, 2), target, ignore_index=1).item())
    assert losses == pytest.approx(expected, rel=1e-5)
    assert len(set(round(x, 4) for x in expected)) == 4  # the heads do differ


# -- word-level KD (kd_cross_entropy) ----------------------------------------------------------------


def kd_task(model, teacher=None):
    """What the criterion needs of a task: the target dictionary and (for alpha > 0) the teacher."""
    return SimpleNamespace(target_dictionary=model.decoder.dictionary, teacher=teacher,
                           teacher_for=lambda student: teacher)  # fmt: skip


def kd_sample(model):
    src, lengths, prev = random_batch(model)
    target = torch.cat([prev[:, 1:], prev.new_full((prev.size(0), 1), 2)], dim=1)
    target[0, -1] = model.decoder.dictionary.pad()
    return {"net_input": {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev},
            "target": target, "ntokens": int(target.ne(1).sum())}  # fmt: skip


def test_kd_criterion_is_fairseqs_label_smoothed_criterion():
    assert issubclass(KDCrossEntropyCriterion, LabelSmoothedCrossEntropyCriterion)
    cfg = KDCrossEntropyConfig()
    assert cfg.label_smoothing == 0.0 and cfg.report_accuracy is False and cfg.ignore_prefix_size == 0
    assert (cfg.kd_alpha, cfg.kd_temperature, cfg.kd_topk) == (0.5, 1.0, 0)


@pytest.mark.parametrize("prefix", [0, 2])
def test_kd_criterion_at_alpha_0_is_label_smoothed_cross_entropy(prefix):
    student = build_model("mdn_tiny", tgt_vocab=60).train()
    sample = kd_sample(student)
    flags = dict(sentence_avg=False, label_smoothing=0.1, ignore_prefix_size=prefix, report_accuracy=True)
    ours = KDCrossEntropyCriterion(kd_task(student), kd_alpha=0.0, **flags)
    theirs = LabelSmoothedCrossEntropyCriterion(kd_task(student), **flags)
    torch.manual_seed(0)
    loss, size, log = ours(student, sample)
    torch.manual_seed(0)
    ref_loss, ref_size, ref_log = theirs(student, sample)
    assert torch.equal(loss, ref_loss) and size == ref_size
    assert {k: v for k, v in log.items() if k != "kd_loss"} == ref_log and log["kd_loss"].item() == 0.0
    assert "n_correct" in log and log["total"] == int(sample["target"][:, prefix:].ne(1).sum())


@pytest.mark.parametrize("prefix", [0, 2])
def test_kd_criterion_adds_the_kd_term(prefix):
    student = build_model("mdn_tiny", tgt_vocab=60, seed=1)
    teacher = build_model("mdn_tiny", tgt_vocab=60, seed=2)
    sample = kd_sample(student)
    crit = KDCrossEntropyCriterion(kd_task(student, teacher), sentence_avg=False, kd_alpha=0.3,
                                   kd_temperature=2.0, ignore_prefix_size=prefix)  # fmt: skip
    loss, _, log = crit(student, sample)
    with torch.no_grad():
        s, t = student(**sample["net_input"])[0][:, prefix:], teacher(**sample["net_input"])[0][:, prefix:]
    target = sample["target"][:, prefix:]
    lprobs = F.log_softmax(s.float(), dim=-1)
    nll = F.nll_loss(lprobs.transpose(1, 2), target, ignore_index=1, reduction="sum")
    kl = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="none").sum(-1)
    kd = (kl * target.ne(1)).sum() * 4
    assert log["nll_loss"].item() == pytest.approx(nll.item(), rel=1e-5)
    assert log["kd_loss"].item() == pytest.approx(kd.item(), rel=1e-5) and kd.item() > 0
    assert loss.item() == pytest.approx(0.7 * nll.item() + 0.3 * kd.item(), rel=1e-5)


def test_kd_criterion_same_teacher_gives_nll_only_and_logs_metrics():
    student = build_model("mdn_tiny", tgt_vocab=60)
    crit = KDCrossEntropyCriterion(kd_task(student, copy.deepcopy(student)), sentence_avg=False, report_accuracy=True)
    loss, _, log = crit(student, kd_sample(student))
    assert log["kd_loss"].abs().item() < 1e-5
    assert loss.item() == pytest.approx(0.5 * log["nll_loss"].item(), rel=1e-5)
    with metrics.aggregate() as agg:
        KDCrossEntropyCriterion.reduce_metrics([log, log])
        values = agg.get_smoothed_values()
    assert {"loss", "nll_loss", "ppl", "kd_loss", "accuracy"} <= set(values)
    assert values["nll_loss"] == pytest.approx(log["nll_loss"].item() / log["ntokens"] / 0.6931471805599453, abs=1e-3)


def test_kd_criterion_without_teacher_or_with_bad_settings_is_refused():
    model = build_model("mdn_tiny", tgt_vocab=60)
    with pytest.raises(MDNError, match="--task translation_wd --teacher-path"):
        KDCrossEntropyCriterion(kd_task(model), sentence_avg=False, kd_alpha=0.5)
    with pytest.raises(DistillationError, match=r"--kd-temperature must be > 0; got 0"):
        KDCrossEntropyCriterion(kd_task(model, model), sentence_avg=False, kd_temperature=0)
