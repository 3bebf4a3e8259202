"""The recipe's pieces (checkpoint averaging, scoring, training state) and scripts/reproduce.sh end to end."""

import json
import subprocess
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from mdn_fairseq import checkpoint, report
from mdn_fairseq.cli import average as average_cli

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# averaging


def test_average_is_the_exact_mean_and_keeps_integer_buffers():
    a = OrderedDict(w=torch.tensor([1.0, 2.0]), b=torch.tensor([[0.5]]), n=torch.tensor([7]))
    b = OrderedDict(w=torch.tensor([3.0, 6.0]), b=torch.tensor([[1.5]]), n=torch.tensor([7]))
    c = OrderedDict(w=torch.tensor([2.0, 1.0]), b=torch.tensor([[1.0]]), n=torch.tensor([7]))
    out = checkpoint.average_state_dicts([a, b, c])
    assert torch.equal(out["w"], torch.tensor([2.0, 3.0]))
    assert torch.equal(out["b"], torch.tensor([[1.0]]))
    assert torch.equal(out["n"], torch.tensor([7])) and out["n"].dtype == torch.int64
    one = checkpoint.average_state_dicts([a])
    assert all(torch.equal(one[k], a[k]) for k in a)


@pytest.mark.parametrize("other, message", [
    (OrderedDict(w=torch.zeros(2)), "other parameters"),
    (OrderedDict(w=torch.zeros(3), n=torch.tensor([7])), "different shapes"),
    (OrderedDict(w=torch.zeros(2), n=torch.tensor([8])), "non-float tensor n differs"),
])
def test_average_refuses_checkpoints_of_different_models(other, message):
    first = OrderedDict(w=torch.zeros(2), n=torch.tensor([7]))
    with pytest.raises(checkpoint.AverageError, match=message):
        checkpoint.average_state_dicts([first, other])


def _fake_checkpoint(path, value, epoch=1, updates=10):
    torch.save({"model": OrderedDict(w=torch.full((2,), float(value))), "cfg": None, "args": None,
                "last_optimizer_state": {"state": {}},
                "optimizer_history": [{"num_updates": updates}],
                "extra_state": {"train_iterator": {"epoch": epoch, "iterations_in_epoch": 0}}}, path)


def test_average_cli_takes_the_last_epoch_checkpoints(tmp_path, capsys):
    for k in range(1, 8):
        _fake_checkpoint(tmp_path / f"checkpoint{k}.pt", k)
    _fake_checkpoint(tmp_path / "checkpoint_last.pt", 100)  # not an epoch checkpoint
    assert [Path(p).name for p in checkpoint.last_epoch_checkpoints(str(tmp_path), 3)] == \
        ["checkpoint7.pt", "checkpoint6.pt", "checkpoint5.pt"]
    out = tmp_path / "avg.pt"
    average_cli.main(["--inputs", str(tmp_path), "--last", "5", "--output", str(out)])
    state = torch.load(out, weights_only=True)
    assert torch.equal(state["model"]["w"], torch.full((2,), 5.0))  # mean of 3..7
    assert "last_optimizer_state" not in state
    assert state["extra_state"]["averaged_from"][0] == "checkpoint7.pt"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_average_cli_without_epoch_checkpoints_says_how_to_keep_them(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        average_cli.main(["--inputs", str(tmp_path), "--output", str(tmp_path / "avg.pt")])
    assert e.value.code == 2 and "--keep-last-epochs" in capsys.readouterr().err
    assert not (tmp_path / "avg.pt").exists()


# ------------------------------------------------------------------------------------------------
# training state and scores


def test_training_done_reads_epochs_and_updates(tmp_path):
    ckpt = tmp_path / "checkpoint_last.pt"
    assert not report.training_done(str(ckpt), 1)  # no checkpoint yet
    _fake_checkpoint(ckpt, 0, epoch=4, updates=40)  # 3 epochs finished, 40 updates
    assert report.training_state(str(ckpt)) == (3, 40)
    assert report.training_done(str(ckpt), 3) and not report.training_done(str(ckpt), 4)
    assert report.training_done(str(ckpt), 4, max_update=40) and not report.training_done(str(ckpt), 4, 41)


GENERATE = """S-1\tzwei hunde
T-1\ttwo dogs
H-1\t-0.5\ttwo dogs
D-1\t-0.5\ttwo dogs
S-0\tein mann
H-0\t-0.2\ta man , smiling .
D-0\t-0.2\ta man , smiling .
Generate test with beam=4: BLEU4 = 42.17, 70.0/50.0/40.0/30.0 (BP=1.000, ratio=1.000, syslen=8, reflen=8)
"""


def test_score_reads_generate_output_in_sentence_order(tmp_path):
    gen = tmp_path / "gen.txt"
    gen.write_text(GENERATE, encoding="utf-8")
    hyps, bleu = report.parse_generate(str(gen))
    assert hyps == ["a man , smiling .", "two dogs"] and bleu == 42.17
    ref = tmp_path / "ref.en"
    ref.write_text("a man, smiling.\ntwo dogs\n", encoding="utf-8")
    s = report.score(str(gen), [str(ref)], "en")
    assert s["sacrebleu"] == 100.0 and s["tok_bleu"] == 42.17 and "nrefs:1" in s["sacrebleu_signature"]
    assert s["detokenised"] == ["a man, smiling.", "two dogs"]
    ref2 = tmp_path / "ref2.en"
    ref2.write_text("someone\nnothing\n", encoding="utf-8")
    assert "nrefs:2" in report.score(str(gen), [str(ref), str(ref2)], "en")["sacrebleu_signature"]


def test_score_detects_dropped_sentences_and_short_references(tmp_path):
    gen = tmp_path / "gen.txt"
    gen.write_text(GENERATE.replace("D-0", "X-0"), encoding="utf-8")
    with pytest.raises(report.ReportError, match="--required-batch-size-multiple 1"):
        report.parse_generate(str(gen))
    gen.write_text(GENERATE, encoding="utf-8")
    ref = tmp_path / "ref.en"
    ref.write_text("only one line\n", encoding="utf-8")
    with pytest.raises(report.ReportError, match="1 lines for 2 hypotheses"):
        report.score(str(gen), [str(ref)], "en")


# ------------------------------------------------------------------------------------------------
# reproduce.sh


def run_reproduce(*args, **kw):
    return subprocess.run(["bash", str(REPO / "scripts" / "reproduce.sh"), *args], capture_output=True, text=True,
                          **kw)


@pytest.mark.parametrize("args, message", [
    (["nope"], "unknown task 'nope' (known: multi30k_en_de multi30k_en_fr nist12_zh_en wmt14_en_de wmt14_en_fr"),
    (["multi30k_en_de", "--world-size", "x"], "--world-size takes a positive integer"),
    (["multi30k_en_de", "--world-size", "4", "--threads", "2"], "--world-size 4 needs 4 GPUs"),
    (["multi30k_en_de", "--bogus"], "unknown argument '--bogus'"),
])
def test_reproduce_bad_arguments(args, message, tmp_path):
    proc = run_reproduce(*args, "--work", str(tmp_path / "w"))
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "w" / "data").exists()


def test_reproduce_quick_end_to_end(tmp_path, multi30k):
    work = tmp_path / "work"
    proc = run_reproduce("multi30k_en_de", "--quick", "--work", str(work), "--data", str(multi30k), "--threads", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for n in range(1, 10):
        assert f"] {n} " in proc.stdout  # every stage announced
    results = json.loads((work / "results" / "results.json").read_text())
    rows = {r["key"]: r for r in results["rows"]}
    assert list(rows) == ["baseline", "bpe10k", "mdn"]
    for r in rows.values():
        assert r["params"] > 0 and r["cpu_fairseq_sent_per_s"] > 0 and r["cpu_fast_sent_per_s"] > 0
        for key in ("valid_bleu", "test_bleu", "test_sacrebleu"):
            assert isinstance(r[key], float) and 0 <= r[key] <= 100
    md = (work / "results" / "results.md").read_text()
    assert "| MDN |" in md and "| + BPE 10K |" in md and "bash scripts/reproduce.sh multi30k_en_de --quick" in md
    # the student was initialised by weight distillation (Multi30k: on the original pairs, see the config)
    assert (work / "mdn_init.pt").is_file() and "not used (STUDENT_DATA=original" in proc.stdout
    # averaged checkpoints are what was scored
    assert (work / "mdn" / "checkpoint_avg.pt").is_file()

    # a re-run does nothing again: every stage is judged finished by its outputs
    stamps = {p: p.stat().st_mtime for p in work.rglob("*.pt")}
    again = run_reproduce("multi30k_en_de", "--quick", "--work", str(work), "--data", str(multi30k),
                          "--threads", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "baseline: trained" in again.stdout and "mdn: trained" in again.stdout
    assert "fairseq-train" not in again.stdout
    assert stamps == {p: p.stat().st_mtime for p in work.rglob("*.pt")}


def test_strategies_table_lists_every_row_with_its_numbers(tmp_path):
    config = {"TASK": "t", "BASELINE_ARCH": "teacher_arch", "STUDENT_ARCH": "student_arch"}
    for i, key in enumerate(("bpe10k", "scratch", "wd", "wd_wordkd", "wd_seqkd")):
        (tmp_path / key).mkdir()
        _fake_checkpoint(tmp_path / key / "checkpoint_avg.pt", i)
        _fake_checkpoint(tmp_path / key / "checkpoint_last.pt", i, epoch=9, updates=100 + i)
        for split in ("valid", "test"):
            (tmp_path / key / f"scores.{split}.json").write_text(json.dumps(
                {"tok_bleu": 10.0 + i + (split == "test"), "sacrebleu": 9.0 + i, "sacrebleu_signature": "sig"}))
    md, result = report.build_strategies(str(tmp_path), config, "bash scripts/training_strategies.sh t")
    assert [r["row"] for r in result["rows"]] == ["teacher", "MDN from scratch", "+ WD", "+ WD + word KD",
                                                  "+ WD + seq KD"]
    assert result["rows"][4]["test_bleu"] == 15.0 and result["rows"][2]["updates"] == 102
    assert "| + WD + word KD | student_arch, initialised from the teacher, (1-a) NLL + a KD | 0.00M | 103 | " \
           "13.00 | 14.00 | 12.00 |" in md
    (tmp_path / "wd" / "scores.test.json").unlink()
    with pytest.raises(report.ReportError, match="scores.test.json: missing"):
        report.build_strategies(str(tmp_path), config)
