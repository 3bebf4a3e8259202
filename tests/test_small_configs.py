"""The 256-wide Multi30k configs (configs/multi30k_*_small.sh) and their architectures: the paper's
parameter-matching rule (mdn_fairseq.models.param_match) against a brute-force search over built models,
every model of the configs within 5% of the baseline's parameters, and the --quick recipe end to end."""

import json
from pathlib import Path

import pytest

from conftest import build_model, run_cli
from mdn_fairseq.errors import MDNError
from mdn_fairseq.models.param_match import count_parameters, matched_encoder_layers, model_flags
from mdn_fairseq.prepare import config_path_for_task, load_config, read_config
from mdn_fairseq.prepare.config import BpeSetting

REPO = Path(__file__).resolve().parents[1]
SMALL = ("multi30k_en_de_small", "multi30k_en_fr_small")
# The vocabularies (fairseq dictionaries, specials included) that `mdn-prepare --task TASK` writes for the small
# configs' BPE settings (baseline: joint 6000 merges; MDN: 6000 source / 2000 target), on full Multi30k:
# (source, target) per BPE setting.  test_the_vocabularies_come_from_the_configs_bpe pins those settings.
VOCAB = {
    "multi30k_en_de_small": {"baseline": (3520, 4480), "mdn": (5784, 2152)},
    "multi30k_en_fr_small": {"baseline": (3968, 4368), "mdn": (5784, 2128)},
}
OURS = ("STUDENT", "AAN_MDN", "CAN_MDN")  # the config's param-matched students (KEY_ARCH / KEY_ARGS)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def student_of(config, key):
    """(arch, flags dict) of a config's student row: STUDENT_ARCH, or KEY_ARCH with KEY_ARGS."""
    arch = config[f"{key}_ARCH"]
    return arch, model_flags(arch, config.get(f"{key}_ARGS", ""))


@pytest.mark.parametrize("task", SMALL)
def test_the_vocabularies_come_from_the_configs_bpe(task):
    bpe = load_config(config_path_for_task(task)).bpe
    assert bpe == {"baseline": BpeSetting(True, 6000, 6000), "mdn": BpeSetting(False, 6000, 2000)}, (
        "re-measure VOCAB (mdn-prepare --task TASK) after changing the BPE merges"
    )


def test_rule_gives_the_papers_depths():
    """At paper dims the rule picks the authors' 22 encoder layers (mdn, 10K target, against Transformer-base at
    32K/32K) and mdn_deep's 64 (against a pre-norm 48-6 teacher)."""
    paper = matched_encoder_layers("transformer", (32000, 32000), "mdn", (32000, 10000))
    assert paper.encoder_layers == 22 and abs(paper.ratio - 1) < 0.02
    deep_teacher = {"encoder_layers": 48, "decoder_layers": 6, "encoder_normalize_before": True}
    deep = matched_encoder_layers("transformer_wmt_en_de", (32000, 32000), "mdn_deep", (32000, 10000), deep_teacher)
    assert deep.encoder_layers == 64


@pytest.mark.parametrize("task", SMALL)
def test_rule_equals_brute_force_over_built_models(task):
    """The closed form (two meta-device builds) picks the depth a search over really built students picks,
    and mdn_small's default is that depth: 8 encoder layers, within 5% of the baseline (7 or 9: 10% off)."""
    vocab = VOCAB[task]
    baseline = n_params(build_model("mdn_transformer_small", *vocab["baseline"]))
    counts = {d: n_params(build_model("mdn_small", *vocab["mdn"], encoder_layers=d)) for d in range(1, 13)}
    brute = min(counts, key=lambda d: (abs(counts[d] - baseline), d))
    match = matched_encoder_layers("mdn_transformer_small", vocab["baseline"], "mdn_small", vocab["mdn"])
    assert (match.encoder_layers, match.student_params, match.baseline_params) == (brute, counts[brute], baseline)
    assert match.per_layer == counts[2] - counts[1]
    default = build_model("mdn_small", *vocab["mdn"])
    assert len(default.encoder.layers) == brute == 8 and n_params(default) == counts[8]
    assert abs(match.ratio - 1) < 0.05
    assert abs(counts[7] / baseline - 1) > 0.05 and abs(counts[9] / baseline - 1) > 0.05


@pytest.mark.parametrize("task", SMALL)
def test_config_students_are_param_matched_within_5_percent(task):
    """MDN, AAN + Ours and CAN + Ours at the config's flags: the rule's depth, within 5% of the baseline."""
    config = read_config(config_path_for_task(task))
    vocab = VOCAB[task]
    baseline = count_parameters(config["BASELINE_ARCH"], vocab["baseline"])
    for key in OURS:
        arch, flags = student_of(config, key)
        model = build_model(arch, *vocab["mdn"], **flags)
        assert abs(n_params(model) / baseline - 1) < 0.05, (task, key, n_params(model), baseline)
        match = matched_encoder_layers(config["BASELINE_ARCH"], vocab["baseline"], arch, vocab["mdn"], None, flags)
        assert len(model.encoder.layers) == match.encoder_layers, (task, key)


@pytest.mark.parametrize("task", SMALL)
def test_config_models_have_the_small_shape(task):
    """Every row's model is 256 wide; the Table 4 peers have the baseline's 3+3 shape, the students 1 decoder
    layer with one 64-dim head, rank-64 output and no FFN (CAN: 64-wide values instead)."""
    config = read_config(config_path_for_task(task))
    vocab = VOCAB[task]
    teacher = build_model(config["BASELINE_ARCH"], *vocab["baseline"])
    assert (len(teacher.encoder.layers), len(teacher.decoder.layers), teacher.decoder.embed_dim) == (3, 3, 256)
    assert teacher.decoder.layers[0].self_attn.num_heads == 4 and teacher.decoder.layers[0].fc1.out_features == 1024
    for key in ("AAN", "SAN", "CAN"):
        arch = config[f"{key}_ARCH"]
        peer = build_model(arch, *vocab["baseline"], **model_flags(arch, config.get(f"{key}_ARGS", "")))
        assert (len(peer.encoder.layers), len(peer.decoder.layers), peer.decoder.embed_dim) == (3, 3, 256), key
    for key in OURS:
        arch, flags = student_of(config, key)
        model = build_model(arch, *vocab["mdn"], **flags)
        assert len(model.decoder.layers) == 1 and model.decoder.embed_dim == 256, key
        assert (model.args.decoder_attention_heads, model.args.decoder_attention_dim) == (1, 64), key
        assert model.decoder.output_projection.A.weight.shape == (vocab["mdn"][1], 64), key
        assert not [n for n, _ in model.decoder.named_parameters() if ".fc1." in n], key


@pytest.mark.parametrize("task", SMALL)
def test_ablation_flags_together_make_the_student(task):
    """scripts/ablation.sh's Table 5 ends with every ABLATION_* flag on BASELINE_ARCH: that is STUDENT_ARCH's model
    (the same parameters, name by name and shape by shape)."""
    config = read_config(config_path_for_task(task))
    flags = " ".join(v for k, v in config.items() if k.startswith("ABLATION_"))
    assert len([k for k in config if k.startswith("ABLATION_")]) == 5
    vocab = VOCAB[task]["mdn"]
    every = build_model(config["BASELINE_ARCH"], *vocab, **model_flags(config["BASELINE_ARCH"], flags))
    student = build_model(config["STUDENT_ARCH"], *vocab)
    shapes = lambda model: {n: tuple(p.shape) for n, p in model.state_dict().items()}  # noqa: E731
    assert shapes(every) == shapes(student)


def test_model_flags_and_the_rule_refuse_bad_input():
    assert model_flags("aan_small", "--encoder-layers 4 --no-decoder-ffn") == {
        "encoder_layers": 4,
        "no_decoder_ffn": True,
    }
    with pytest.raises(MDNError, match=r"--arch aan_small does not take '--bogus 3'"):
        model_flags("aan_small", "--encoder-layers 4 --bogus 3")
    with pytest.raises(MDNError, match="unknown architecture 'nope'"):
        model_flags("nope")
    # a 256-wide student cannot match a 64-wide baseline
    with pytest.raises(MDNError, match="mdn_small with one encoder layer already has 996,736 parameters"):
        matched_encoder_layers("mdn_transformer_tiny", (100, 100), "mdn_small", (100, 100))


@pytest.mark.slow
def test_reproduce_small_quick_end_to_end(tmp_path, multi30k):
    """reproduce.sh multi30k_en_de_small --quick: every stage passes, and the three rows are the small archs (their
    parameter counts at the slice's vocabularies), the student initialised from the teacher."""
    work = tmp_path / "work"
    cmd = ["bash", REPO / "scripts" / "reproduce.sh", "multi30k_en_de_small", "--quick", "--work", work]
    run_cli([*cmd, "--data", multi30k, "--threads", "2"], cwd=REPO, timeout=1800)
    results = json.loads((work / "results" / "results.json").read_text())
    params = {r["key"]: r["params"] for r in results["rows"]}
    stages = json.loads((work / "data" / "prepare.json").read_text())["stages"]
    vocab = {bpe: tuple(stages[f"{bpe}/bin"]["vocab"][lang] for lang in ("en", "de")) for bpe in ("baseline", "mdn")}
    assert params == {
        "baseline": count_parameters("mdn_transformer_small", vocab["baseline"]),
        "bpe10k": count_parameters("mdn_transformer_small", vocab["mdn"]),
        "mdn": count_parameters("mdn_small", vocab["mdn"]),
    }
    assert (work / "mdn_init.pt").is_file()
    assert "bash scripts/reproduce.sh multi30k_en_de_small --quick" in (work / "results" / "results.md").read_text()
