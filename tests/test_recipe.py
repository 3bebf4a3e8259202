"""The recipe's pieces (checkpoint averaging, scoring, training state) and scripts/reproduce.sh end to end."""

import gzip
import hashlib
import json
import os
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


@pytest.mark.parametrize(
    "other, message",
    [
        (OrderedDict(w=torch.zeros(2)), "other parameters"),
        (OrderedDict(w=torch.zeros(3), n=torch.tensor([7])), "different shapes"),
        (OrderedDict(w=torch.zeros(2), n=torch.tensor([8])), "non-float tensor n differs"),
    ],
)
def test_average_refuses_checkpoints_of_different_models(other, message):
    first = OrderedDict(w=torch.zeros(2), n=torch.tensor([7]))
    with pytest.raises(checkpoint.AverageError, match=message):
        checkpoint.average_state_dicts([first, other])


def _fake_checkpoint(path, value, epoch=1, updates=10):
    torch.save(
        {
            "model": OrderedDict(w=torch.full((2,), float(value))),
            "cfg": None,
            "args": None,
            "last_optimizer_state": {"state": {}},
            "optimizer_history": [{"num_updates": updates}],
            "extra_state": {"train_iterator": {"epoch": epoch, "iterations_in_epoch": 0}},
        },
        path,
    )


def test_average_cli_takes_the_last_epoch_checkpoints(tmp_path, capsys):
    for k in range(1, 8):
        _fake_checkpoint(tmp_path / f"checkpoint{k}.pt", k)
    _fake_checkpoint(tmp_path / "checkpoint_last.pt", 100)  # not an epoch checkpoint
    assert [Path(p).name for p in checkpoint.last_epoch_checkpoints(str(tmp_path), 3)] == [
        "checkpoint7.pt",
        "checkpoint6.pt",
        "checkpoint5.pt",
    ]
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
    return subprocess.run(["bash", str(REPO / "scripts" / "reproduce.sh"), *args], capture_output=True, text=True, **kw)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["nope"],
            "unknown task 'nope' (known: multi30k_en_de multi30k_en_de_small multi30k_en_fr multi30k_en_fr_small "
            "nist12_zh_en wmt14_en_de wmt14_en_fr",
        ),
        (["multi30k_en_de", "--world-size", "x"], "--world-size takes a positive integer"),
        (["multi30k_en_de", "--world-size", "4", "--threads", "2"], "--world-size 4 needs 4 GPUs"),
        (["multi30k_en_de", "--bogus"], "unknown argument '--bogus'"),
    ],
)
def test_reproduce_bad_arguments(args, message, tmp_path):
    proc = run_reproduce(*args, "--work", str(tmp_path / "w"))
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "w" / "data").exists()


def served_test_2017(folder: Path, multi30k: Path):
    """The environment of a recipe run whose Multi30k download source is ``folder`` (a file:// URL): the
    config's second test set, test_2017_flickr, made of 100 val pairs (from line 301), with its checksums."""
    folder.mkdir()
    sums = []
    for lang in ("en", "de"):
        with gzip.open(multi30k / f"val.{lang}.gz", "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()[300:400]
        path = folder / f"test_2017_flickr.{lang}.gz"
        path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode("utf-8")))
        sums.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    (folder / "sums.sha256").write_text("".join(sums))
    return {**os.environ, "MDN_MULTI30K_URL": folder.as_uri(), "MDN_MULTI30K_SHA256": str(folder / "sums.sha256")}


@pytest.fixture(scope="module")
def quick_work(tmp_path_factory, multi30k):
    """One ``reproduce.sh multi30k_en_de --quick`` run, shared by this module's end-to-end tests (the
    ``--peers`` test adds its rows to the same folder): (work folder, its CompletedProcess, its environment).
    The config's second test set is downloaded from a local folder (:func:`served_test_2017`)."""
    work = tmp_path_factory.mktemp("reproduce") / "work"
    env = served_test_2017(work.parent / "served", multi30k)
    proc = run_reproduce(
        "multi30k_en_de", "--quick", "--work", str(work), "--data", str(multi30k), "--threads", "2", env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc, env


def test_reproduce_quick_end_to_end(quick_work, multi30k):
    work, proc, env = quick_work
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
    # both test sets of the config: test_2016_flickr local, test_2017_flickr downloaded under WORK/data
    assert [(t["subset"], t["name"], t["missing"]) for t in results["test_sets"]] == [
        ("test", "test_2016_flickr", False),
        ("test1", "test_2017_flickr", False),
    ]
    assert (work / "data" / "download" / "test_2017_flickr.de.gz").is_file()
    assert not (multi30k / "test_2017_flickr.de.gz").exists()
    assert (
        "test_2016_flickr BLEU | test_2016_flickr sacreBLEU | test_2017_flickr BLEU | test_2017_flickr sacreBLEU" in md
    )
    for key, r in rows.items():
        assert r["test_sets"]["test_2016_flickr"]["bleu"] == r["test_bleu"]
        assert 0 <= r["test_sets"]["test_2017_flickr"]["sacrebleu"] <= 100
        assert json.loads((work / key / "scores.test1.json").read_text())["sentences"] == 100
        assert f"   {key} test1 (test_2017_flickr): tokenised BLEU" in proc.stdout
    assert list(report.read_scores(str(work), "mdn")) == ["valid", "test", "test1"]
    # the student was initialised by weight distillation (Multi30k: on the original pairs, see the config)
    assert (work / "mdn_init.pt").is_file() and "not used (STUDENT_DATA=original" in proc.stdout
    # averaged checkpoints are what was scored
    assert (work / "mdn" / "checkpoint_avg.pt").is_file()

    # a re-run does nothing again: every stage is judged finished by its outputs (scores included)
    stamps = {p: p.stat().st_mtime for p in [*work.rglob("*.pt"), *work.rglob("scores.*.json")]}
    args = ("multi30k_en_de", "--quick", "--work", str(work), "--data", str(multi30k), "--threads", "2")
    again = run_reproduce(*args, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "baseline: trained" in again.stdout and "mdn: trained" in again.stdout
    assert "fairseq-train" not in again.stdout and ": tokenised BLEU" not in again.stdout  # nothing scored again
    assert stamps == {p: p.stat().st_mtime for p in [*work.rglob("*.pt"), *work.rglob("scores.*.json")]}


def test_strategies_table_lists_every_row_with_its_numbers(tmp_path):
    config = {"TASK": "t", "BASELINE_ARCH": "teacher_arch", "STUDENT_ARCH": "student_arch"}
    for i, key in enumerate(("bpe10k", "scratch", "wd", "wd_wordkd", "wd_seqkd")):
        (tmp_path / key).mkdir()
        _fake_checkpoint(tmp_path / key / "checkpoint_avg.pt", i)
        _fake_checkpoint(tmp_path / key / "checkpoint_last.pt", i, epoch=9, updates=100 + i)
        for split in ("valid", "test"):
            (tmp_path / key / f"scores.{split}.json").write_text(
                json.dumps(
                    {"tok_bleu": 10.0 + i + (split == "test"), "sacrebleu": 9.0 + i, "sacrebleu_signature": "sig"}
                )
            )
    md, result = report.build_strategies(str(tmp_path), config, "bash scripts/training_strategies.sh t")
    assert [r["row"] for r in result["rows"]] == [
        "teacher",
        "MDN from scratch",
        "+ WD",
        "+ WD + word KD",
        "+ WD + seq KD",
    ]
    assert result["rows"][4]["test_bleu"] == 15.0 and result["rows"][2]["updates"] == 102
    assert (
        "| + WD + word KD | student_arch, initialised from the teacher, (1-a) NLL + a KD | 0.00M | 103 | "
        "13.00 | 14.00 | 12.00 |" in md
    )
    (tmp_path / "wd" / "scores.test.json").unlink()
    with pytest.raises(report.ReportError, match="scores.test.json: missing"):
        report.build_strategies(str(tmp_path), config)


# ------------------------------------------------------------------------------------------------
# --peers: the paper's peers (Table 4) and "+ Ours" on AAN and CAN (Table 7)

PEER_CONFIG = {
    "TASK": "t",
    "SRC": "en",
    "TGT": "de",
    "STUDENT_DATA": "original",
    "AAN_ARCH": "aan_tiny",
    "AAN_ARGS": "",
    "SAN_ARCH": "san_tiny",
    "SAN_ARGS": "--decoder-layers 2",
    "CAN_ARCH": "can_tiny",
    "AAN_MDN_ARCH": "aan_tiny",
    "AAN_MDN_ARGS": "--decoder-layers 1",
    "CAN_MDN_ARCH": "can_mdn",
}
SYSTEMS = {
    "baseline": "Baseline",
    "bpe10k": "+ BPE 10K",
    "mdn": "MDN",
    "aan": "AAN",
    "san": "SAN",
    "can": "CAN",
    "aan_mdn": "AAN + Ours",
    "can_mdn": "CAN + Ours",
}


def _fake_results(work, speeds):
    """A reproduce.sh work folder: every row's averaged checkpoint and scores, and a CPU benchmark with the
    per-repeat sentences/s of ``speeds`` ({(System, generator): [runs]}; speedups over Baseline · fairseq)."""
    for i, key in enumerate(SYSTEMS):
        (work / key).mkdir(parents=True)
        _fake_checkpoint(work / key / "checkpoint_avg.pt", i)
        for split in ("valid", "test"):
            (work / key / f"scores.{split}.json").write_text(
                json.dumps(
                    {"tok_bleu": 10.0 + i + (split == "test"), "sacrebleu": 9.0 + i, "sacrebleu_signature": "sig"}
                )
            )
    base = speeds[("Baseline", "fairseq")]
    rows = [
        {
            "model": name,
            "generator": gen,
            "int8": False,
            "sent_per_s": {"median": sorted(runs)[1], "runs": runs},
            "speedup": {"median": sorted(r / b for r, b in zip(runs, base))[1]},
        }
        for (name, gen), runs in speeds.items()
    ]
    (work / "bench").mkdir()
    (work / "bench" / "cpu.json").write_text(
        json.dumps(
            {
                "setting": {"hardware": "cpu", "threads": 2, "batch": 64, "beam": 4, "sentences": 10, "repeats": 3},
                "rows": rows,
                "notes": ["AAN: no fast row (decoder layer 0 self attention has its own forward)"],
            }
        )
    )


def test_results_table_with_peers_adds_their_rows_and_a_table7_block(tmp_path):
    speeds = {
        (name, gen): [
            10.0 * (i + 1) * (1 + (gen == "fast")),
            20.0 * (i + 1) * (1 + (gen == "fast")),
            15.0 * (i + 1) * (1 + (gen == "fast")),
        ]
        for i, name in enumerate(SYSTEMS.values())
        for gen in ("fairseq", "fast")
    }
    del speeds[("AAN", "fast")]  # the lean search handed AAN over: no fast row, a note
    speeds[("AAN + Ours", "fairseq")] = [70.0, 200.0, 60.0]  # over AAN's [40, 80, 60]: ratios 1.75, 2.5, 1.0
    _fake_results(tmp_path, speeds)
    plain_md, plain = report.build_table(str(tmp_path), PEER_CONFIG, "bash scripts/reproduce.sh t")
    md, result = report.build_table(str(tmp_path), PEER_CONFIG, "bash scripts/reproduce.sh t --peers", peers=True)
    # without --peers nothing changes: three rows, no Table 7; with it every plain line is still there
    assert [r["key"] for r in plain["rows"]] == ["baseline", "bpe10k", "mdn"] and "table7" not in plain
    assert "AAN" not in plain_md
    assert set(plain_md.splitlines()) - set(md.splitlines()) == {"Made by `bash scripts/reproduce.sh t`."}

    assert [r["key"] for r in result["rows"]] == ["baseline", "bpe10k", "mdn", "aan", "san", "can"]
    assert [(r["key"], r["system"], r["peer"]) for r in result["table7"]] == [
        ("aan_mdn", "AAN + Ours", "aan"),
        ("can_mdn", "CAN + Ours", "can"),
    ]
    aan, ours = result["rows"][3], result["table7"][0]
    assert aan["test_bleu"] == 14.0 and aan["cpu_fairseq_speedup"] == 4.0 and aan["cpu_fast_sent_per_s"] is None
    assert ours["cpu_fairseq_over_peer"] == 1.75 and ours["cpu_fast_over_peer"] is None  # no AAN fast row
    assert result["table7"][1]["cpu_fast_over_peer"] == pytest.approx(8 / 6)  # CAN + Ours (8) over CAN (6), fast
    # Table 4 gets the peer rows in its layout; Table 7 puts each "+ Ours" row under its peer
    assert "| SAN | 0.00M | 14.00 | 15.00 | 13.00 | 75.0 | 5.00× | 150.0 | 10.00× |" in md
    table7 = md[md.index("## Table 7") :]
    assert "| AAN | 0.00M | 13.00 | 14.00 | 12.00 | 60.0 | 4.00× | – | – | 1.00× / – |" in table7
    assert "| AAN + Ours | 0.00M | 16.00 | 17.00 | 15.00 | 70.0 | 7.00× | 210.0 | 14.00× | 1.75× / – |" in table7
    assert "| CAN + Ours | 0.00M | 17.00 | 18.00 | 16.00 | 120.0 | 8.00× | 240.0 | 16.00× | 1.33× / 1.33× |" in table7
    assert "SAN `san_tiny --decoder-layers 2`" in md and "AAN + Ours `aan_tiny --decoder-layers 1`" in md
    assert "CAN + Ours `can_mdn`" in md and "STUDENT_DATA=original" in md
    assert "- CPU: AAN: no fast row (decoder layer 0 self attention has its own forward)" in md
    (tmp_path / "can_mdn" / "scores.valid.json").unlink()
    with pytest.raises(report.ReportError, match="can_mdn/scores.valid.json: missing"):
        report.build_table(str(tmp_path), PEER_CONFIG, peers=True)
    report.build_table(str(tmp_path), PEER_CONFIG)  # the plain table does not need the peers


@pytest.mark.slow
def test_reproduce_quick_peers_end_to_end(quick_work, multi30k):
    work, _, env = quick_work
    stamps = {p: p.stat().st_mtime for p in work.rglob("*.pt")}  # the plain run's models
    args = ("multi30k_en_de", "--quick", "--peers", "--work", str(work), "--data", str(multi30k), "--threads", "2")
    proc = run_reproduce(*args, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "] 6a peers (Table 4)" in proc.stdout and "] 6b + Ours (Table 7)" in proc.stdout
    assert "baseline: trained" in proc.stdout and "mdn: trained" in proc.stdout  # not trained again
    assert stamps == {p: p.stat().st_mtime for p in stamps}
    results = json.loads((work / "results" / "results.json").read_text())
    rows = {r["key"]: r for r in results["rows"] + results["table7"]}
    assert list(rows) == list(SYSTEMS)
    bench = json.loads((work / "bench" / "cpu.json").read_text())
    for key, r in rows.items():
        assert r["params"] > 0 and r["cpu_fairseq_sent_per_s"] > 0, key
        # the lean search decodes the row, or the benchmark says why it handed it over
        assert (r["cpu_fast_sent_per_s"] or 0) > 0 or any(n.startswith(r["system"] + ":") for n in bench["notes"])
        for k in ("valid_bleu", "test_bleu", "test_sacrebleu"):
            assert isinstance(r[k], float) and 0 <= r[k] <= 100, (key, k)
        assert (work / "models" / key / "model.pt").is_file()
    assert rows["aan_mdn"]["cpu_fairseq_over_peer"] > 0 and rows["can_mdn"]["cpu_fairseq_over_peer"] > 0
    # the models the config names: the peers at the baseline's shape, "+ Ours" at mdn_tiny's, by WD
    # fairseq saves an argparse model's cfg["model"] as a Namespace, a dataclass model's as a dict
    cfgs = {k: checkpoint.load_checkpoint(str(work / k / "checkpoint_last.pt"))["cfg"] for k in rows}

    def get(part, name):
        return part[name] if isinstance(part, dict) else getattr(part, name)

    shape = {
        k: tuple(get(c["model"], f) for f in ("_name", "encoder_embed_dim", "encoder_layers", "decoder_layers"))
        + (get(c["criterion"], "_name"),)
        for k, c in cfgs.items()
    }
    assert shape["baseline"][1:] == (64, 2, 2, "label_smoothed_cross_entropy")
    for key in ("aan", "san", "can"):
        assert shape[key] == (f"{key}_tiny",) + shape["baseline"][1:]
    for key in ("aan_mdn", "can_mdn"):
        assert shape[key] == (key.replace("mdn", "tiny"), 64, 4, 1, "cross_entropy")
        assert get(cfgs[key]["model"], "output_rank") == 16 and get(cfgs[key]["model"], "decoder_dropout") == 0
        assert (work / f"{key}_init.pt").is_file()
    md = (work / "results" / "results.md").read_text()
    assert "| CAN |" in md and "| AAN + Ours |" in md and "## Table 7" in md and "--quick --peers`" in md

    # a re-run does nothing again
    stamps = {p: p.stat().st_mtime for p in work.rglob("*.pt")}
    again = run_reproduce(*args, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "can_mdn: trained" in again.stdout and "fairseq-train" not in again.stdout
    assert stamps == {p: p.stat().st_mtime for p in work.rglob("*.pt")}
    # a plain run over it (ablation.sh's first step) keeps the --peers table instead of dropping its peer rows
    plain = run_reproduce(*[a for a in args if a != "--peers"], env=env)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "results.md: kept, it is a --peers table" in plain.stdout
    assert (work / "results" / "results.md").read_text() == md
