"""scripts/ablation.sh: the rows of Tables 2 and 5 (plan, reuse, up-front checks), the tables and the BPE sweep
from fake work folders, and the script end to end on a --quick slice."""

import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdn_fairseq import ablation
from mdn_fairseq.ablation import sweep
from mdn_fairseq.errors import MDNError
from mdn_fairseq.prepare import load_config
from mdn_fairseq.report import read_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "mdn_fairseq" / "configs" / "multi30k_en_de.sh"
TABLE2 = ["Baseline", "Shallow decoder", "One head", "No decoder FFN", "Low-rank output"]
TABLE5 = ["Baseline", "+ merge operations", "+ shallow decoder", "+ pruning heads", "+ dropping FFN",
          "+ output factorisation", "+ deep configuration", "+ WD", "− decoder dropout", "− label smoothing"]  # fmt: skip


def run_ablation(*args, script=REPO / "scripts" / "ablation.sh"):
    return subprocess.run(["bash", str(script), *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def config():
    return read_config(CONFIG)


@pytest.fixture(scope="module")
def plan(config):
    return ablation.build_plan(config, str(CONFIG))


# ------------------------------------------------------------------------------------------------
# the plan: rows, the trainings behind them, checks before any training


def test_plan_has_both_tables_and_trains_each_model_once(plan):
    rows = {(r["table"], r["label"]): r["key"] for r in plan["rows"]}
    assert [label for t, label in rows if t == 2] == TABLE2 and [label for t, label in rows if t == 5] == TABLE5
    # the same model is one training: reproduce.sh's three, and Table 5's "+ shallow decoder" is Table 2's
    assert rows[(2, "Baseline")] == rows[(5, "+ merge operations")] == "bpe10k"
    assert rows[(5, "Baseline")] == "baseline" and rows[(5, "− label smoothing")] == "mdn"  # STUDENT_DATA=original
    assert rows[(5, "+ shallow decoder")] == rows[(2, "Shallow decoder")] == "abl2_shallow"
    keys = [t["key"] for t in plan["trainings"]]
    assert len(keys) == len(set(keys)) == len(set(rows.values())) == 13
    owners = {t["key"]: t["owner"] for t in plan["trainings"]}
    assert {k for k, o in owners.items() if o == "reproduce.sh"} == {"baseline", "bpe10k", "mdn"}
    wd = {t["key"]: t for t in plan["trainings"] if t["wd"]}
    assert set(wd) == {"abl5_wd", "abl5_no_dd", "mdn"} and wd["abl5_wd"]["epochs"] == "STUDENT_MAX_EPOCH"
    # the cumulative model is the student: mdn_tiny's dims, reached from the baseline architecture by the flags
    deep = ablation.plan.training(plan, "abl5_deep")
    assert deep.arch == "mdn_transformer_tiny" and deep.smoothing and not deep.wd
    assert plan["models"]["abl5_deep"] == dict(plan["models"]["mdn"], decoder_dropout=None)


def test_plan_lines_for_the_script(plan):
    lines = [line.split("|") for line in ablation.bash_lines(plan)]
    assert all(len(f) == 9 for f in lines)
    by_key = {f[1]: f for f in lines}
    owner, _, bpe, data, epochs, wd, model, criterion, rows = by_key["abl5_no_dd"]
    assert (owner, bpe, data, epochs, wd) == ("ablation.sh", "mdn", "mdn", "STUDENT_MAX_EPOCH", "1")
    assert model.endswith("--output-rank 16 --encoder-layers 4 --decoder-dropout 0")
    assert criterion == "--criterion label_smoothed_cross_entropy --label-smoothing 0.1"
    assert by_key["abl2_shallow"][8] == "Table 2 Shallow decoder = Table 5 + shallow decoder"


def test_plan_of_one_table_trains_only_its_rows(config):
    two = ablation.build_plan(config, str(CONFIG), tables=(2,))
    assert two["tables"] == [2] and [r["label"] for r in two["rows"]] == TABLE2
    owners = {t["key"]: t["owner"] for t in two["trainings"]}
    assert owners == {"bpe10k": "reproduce.sh", "abl2_shallow": "ablation.sh", "abl2_heads": "ablation.sh",
                      "abl2_ffn": "ablation.sh", "abl2_rank": "ablation.sh"}  # fmt: skip
    five = ablation.build_plan(config, str(CONFIG), tables=(5,))
    assert [r["label"] for r in five["rows"]] == TABLE5
    keys = {t["key"] for t in five["trainings"]}
    # Table 5's "+ shallow decoder" keeps Table 2's key, so a --tables 2 run's model is reused by --tables 5
    assert {"baseline", "bpe10k", "mdn", "abl2_shallow", "abl5_heads"} <= keys and "abl2_heads" not in keys
    assert len(keys) == 10


@pytest.mark.parametrize("text", ["3", "2,2", "2, 2", "", "two", "2,5,7", " 2", "02", "2, 5"])
def test_tables_other_than_2_and_5_are_refused(text):
    with pytest.raises(ablation.AblationError, match=f"--tables takes 2, 5 or 2,5 .*got '{text}'"):
        ablation.parse_tables(text)


def test_tables_parse_and_name_their_files():
    assert ablation.parse_tables("5,2") == ablation.parse_tables("2,5") == (2, 5)
    assert ablation.parse_tables("5") == (5,)
    assert ablation.plan_path("W") == "W/ablation/plan.json" and ablation.bench_path("W", (2,)) == (
        "W/ablation/bench_table2/cpu.json"
    )


def test_original_plus_distilled_student_data_makes_the_last_row_its_own_training(config):
    plan = ablation.build_plan(dict(config, STUDENT_DATA="original+distilled"))
    last = [r for r in plan["rows"] if r["label"] == "− label smoothing"][0]
    assert last["key"] == "abl5_no_ls"
    assert ablation.plan.training(plan, "mdn") is None  # not a row any more: the student trains on other data
    assert ablation.plan.training(plan, "abl5_no_ls").data == "mdn"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ABLATION_NO_FFN": ""}, "ABLATION_NO_FFN is missing: scripts/ablation.sh needs the model flags"),
        (
            {"ABLATION_ONE_HEAD": "--decoder-attention-heads 3 --decoder-attention-dim 16"},
            "Table 2 'One head': --arch mdn_transformer_tiny --decoder-attention-heads 3 --decoder-attention-dim 16 "
            "(flags of ABLATION_ONE_HEAD): --decoder-attention-dim (16) must be a positive multiple of "
            "--decoder-attention-heads (3)",
        ),
        ({"ABLATION_LOW_RANK": "--output-rank -1"}, "(flags of ABLATION_LOW_RANK): --output-rank must be 0"),
        ({"ABLATION_DEEP_ENCODER": "--encoder-layerz 4"}, "unrecognized arguments: --encoder-layerz 4"),
        # flags that contradict each other only once combined: Table 5 names every variable of the row
        (
            {"ABLATION_NO_FFN": "--no-decoder-ffn", "ABLATION_LOW_RANK": "--output-rank 16 --decoder-ffn-embed-dim 32"},
            "Table 5 '+ output factorisation'",
        ),
        ({"BASELINE_ARCH": "transformer"}, "transformer is not an MDN architecture"),
    ],
)
def test_plan_refuses_flags_that_cannot_be_trained(config, change, message):
    with pytest.raises(ablation.AblationError, match="cfg.sh: ") as err:
        ablation.build_plan(dict(config, **change), "cfg.sh")
    assert message in str(err.value)


# ------------------------------------------------------------------------------------------------
# the tables, from a fake work folder


def _fake_checkpoint(path: Path, params: int, tgt_vocab: int = 10):
    path.parent.mkdir(parents=True, exist_ok=True)
    model = {
        "encoder.fc.weight": torch.zeros(params - tgt_vocab),
        "decoder.embed_tokens.weight": torch.zeros(tgt_vocab, 1),
    }
    torch.save({"model": model, "cfg": None, "args": None}, path)


def _fake_scores(folder: Path, i: int):
    for split, bleu in (("valid", 10.0 + i), ("test", 20.0 + i)):
        (folder / f"scores.{split}.json").write_text(
            json.dumps({"tok_bleu": bleu, "sacrebleu": bleu - 1, "sacrebleu_signature": "sig"})
        )


def _fake_bench(path: Path, speeds):
    """An mdn-bench JSON with fairseq and fast rows per name: ``speeds`` {name: [runs]} (fast: twice as fast)."""
    rows = [
        {"model": name, "generator": gen, "int8": False,
         "sent_per_s": {"median": sorted(r)[len(r) // 2] * f, "runs": [x * f for x in r]}}
        for name, r in speeds.items() for gen, f in (("fairseq", 1), ("fast", 2))
    ]  # fmt: skip
    setting = {"hardware": "cpu X", "threads": 2, "batch": 64, "beam": 4, "sentences": 10, "repeats": 3}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"setting": setting, "rows": rows}))


@pytest.fixture
def fake_work(tmp_path, plan):
    keys = [t["key"] for t in plan["trainings"]]
    for i, key in enumerate(keys):
        _fake_checkpoint(tmp_path / key / "checkpoint_avg.pt", 1000 * (i + 1))
        _fake_scores(tmp_path / key, i)
    _fake_bench(tmp_path / "ablation" / "bench" / "cpu.json", {k: [10.0 * (i + 1)] * 3 for i, k in enumerate(keys)})
    (tmp_path / "data").mkdir()
    sets = [{"subset": "test", "name": "test_2016_flickr"},
            {"subset": "test1", "name": "test_2017_flickr", "missing": True, "reason": "not downloadable"}]  # fmt: skip
    (tmp_path / "data" / "prepare.json").write_text(json.dumps({"quick": True, "test_sets": sets}))
    return tmp_path, keys


def test_tables_have_every_row_with_bleu_and_speed(fake_work, plan, config):
    work, keys = fake_work
    md, result = ablation.build_tables(str(work), config, plan, "bash scripts/ablation.sh multi30k_en_de --quick")
    t2, t5 = result["tables"]["2"], result["tables"]["5"]
    assert [r["label"] for r in t2] == TABLE2 and [r["label"] for r in t5] == TABLE5
    for r in t2 + t5:
        assert r["params"] > 0 and isinstance(r["valid_bleu"], float) and isinstance(r["test_bleu"], float)
        assert r["cpu_fairseq_sent_per_s"] > 0 and r["cpu_fast_sent_per_s"] > 0
    # speedups over the table's first row with fairseq's generator: Table 2 over + BPE 10K, Table 5 over Baseline
    i = {k: keys.index(k) + 1 for k in keys}
    shallow2, shallow5 = t2[1], t5[2]
    assert shallow2["key"] == shallow5["key"] == "abl2_shallow"
    assert shallow2["cpu_fairseq_speedup"] == pytest.approx(i["abl2_shallow"] / i["bpe10k"])
    assert shallow5["cpu_fairseq_speedup"] == pytest.approx(i["abl2_shallow"] / i["baseline"])
    assert t5[0]["cpu_fairseq_speedup"] == 1.0 and t5[0]["cpu_fast_speedup"] == 2.0
    assert t5[-1]["key"] == "mdn" and t5[-1]["test_sacrebleu"] == 20.0 + keys.index("mdn") - 1
    assert t5[-1]["test_sets"]["test_2017_flickr"] == {"subset": "test1", "missing": True}
    # every test set gets BLEU and sacreBLEU; a set that could not be prepared is marked, with a note
    n = keys.index("abl5_heads")
    line = f"| + pruning heads | `--decoder-attention-heads 1 --decoder-attention-dim 16` | {(n + 1) / 1000:.2f}M | "
    assert line + f"{10 + n:.2f} | {20 + n:.2f} | {19 + n:.2f} | missing | missing | {10.0 * (n + 1):.1f} | " in md
    assert "test_2016_flickr BLEU | test_2016_flickr sacreBLEU | test_2017_flickr BLEU" in md
    assert "test set test_2017_flickr (subset test1) is named in the config but could not be prepared" in md
    assert "not results" in md and "--quick`" in md
    assert "- `WORK/abl2_shallow`: Table 2 *Shallow decoder* = Table 5 *+ shallow decoder*" in md
    assert "- `WORK/mdn` (reproduce.sh's model): Table 5 *− label smoothing*" in md
    assert "cpu X, 2 threads, batch 64, beam 4" in md and result["setting"]["beam"] == 4
    assert json.loads(json.dumps(result)) == result  # JSON as it is written


def test_table_2_alone(fake_work, config):
    work, keys = fake_work
    two = ablation.build_plan(config, str(CONFIG), tables=(2,))
    md, result = ablation.build_tables(str(work), config, two)
    assert list(result["tables"]) == ["2"] and [r["label"] for r in result["tables"]["2"]] == TABLE2
    assert md.startswith("# multi30k_en_de: ablations (the paper's Table 2)")
    assert "## Table 2 analogue" in md and "Table 5" not in md and "+ WD" not in md
    assert "Models: `mdn_transformer_tiny` (Baseline) 2+2 layers, 64 wide" in md
    assert set(two["models"]) == {"bpe10k", "abl2_shallow", "abl2_heads", "abl2_ffn", "abl2_rank"}
    assert result["setting"]["student"] is None and result["setting"]["baseline"] == two["models"]["bpe10k"]
    # its speeds come from its own benchmark (bench_table2), not from a run over both tables
    assert "Speed: not measured (no WORK/ablation/bench_table2/cpu.json)" in md
    _fake_bench(Path(ablation.bench_path(str(work), (2,))), {k: [10.0 * (i + 1)] * 3 for i, k in enumerate(keys)})
    _, result = ablation.build_tables(str(work), config, two)
    assert result["tables"]["2"][1]["cpu_fairseq_speedup"] == pytest.approx(
        (keys.index("abl2_shallow") + 1) / (keys.index("bpe10k") + 1)
    )


def test_table_5_alone(fake_work, config):
    work, keys = fake_work
    five = ablation.build_plan(config, str(CONFIG), tables=(5,))
    _fake_bench(Path(ablation.bench_path(str(work), (5,))), {k: [10.0 * (i + 1)] * 3 for i, k in enumerate(keys)})
    md, result = ablation.build_tables(str(work), config, five)
    assert list(result["tables"]) == ["5"] and [r["label"] for r in result["tables"]["5"]] == TABLE5
    assert md.startswith("# multi30k_en_de: ablations (the paper's Table 5)")
    assert "## Table 2" not in md and "(Table 2)" not in md and "Table 2 *" not in md
    assert result["setting"]["sacrebleu_signature"] == result["tables"]["5"][0]["sacrebleu_signature"]
    assert result["setting"]["student"] == five["models"]["mdn"]
    assert all(r["cpu_fast_sent_per_s"] > 0 for r in result["tables"]["5"])


def test_report_refuses_a_plan_made_for_other_tables(fake_work, config, tmp_path):
    work, _ = fake_work
    two = ablation.build_plan(config, str(CONFIG), tables=(2,))
    plan_file = Path(ablation.plan_path(str(work), (2,)))
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps(two))
    out = [sys.executable, "-m", "mdn_fairseq.cli.report", "ablation", "table", "--work", str(work), "--config",
           str(CONFIG), "--out-md", str(tmp_path / "a.md"), "--out-json", str(tmp_path / "a.json")]  # fmt: skip
    proc = subprocess.run([*out, "--plan", str(plan_file)], capture_output=True, text=True)
    assert proc.returncode == 2 and "is for --tables 2, not --tables 2,5: pass --tables 2" in proc.stderr
    assert not (tmp_path / "a.md").exists()
    proc = subprocess.run([*out, "--tables", "2"], capture_output=True, text=True)  # the run's own plan by default
    assert proc.returncode == 0, proc.stderr
    assert "## Table 2 analogue" in (tmp_path / "a.md").read_text()


def test_tables_name_what_is_missing(fake_work, plan, config):
    work, _ = fake_work
    (work / "ablation" / "bench" / "cpu.json").unlink()
    md, result = ablation.build_tables(str(work), config, plan)
    assert "Speed: not measured" in md and result["tables"]["5"][3]["cpu_fast_sent_per_s"] is None
    (work / "abl5_ffn" / "scores.test.json").unlink()
    with pytest.raises(MDNError, match="abl5_ffn/scores.test.json: missing; run the evaluation"):
        ablation.build_tables(str(work), config, plan)
    (work / "abl2_rank" / "checkpoint_avg.pt").unlink()
    with pytest.raises(ablation.AblationError, match="abl2_rank/checkpoint_avg.pt: missing"):
        ablation.build_tables(str(work), config, plan)


# ------------------------------------------------------------------------------------------------
# --bpe-sweep


@pytest.mark.parametrize("text", ["2000,x", "0,100", "-5", "2000,,4000", "200,200"])
def test_sweep_refuses_bad_merge_lists(text):
    with pytest.raises(ablation.AblationError, match="--bpe-sweep"):
        sweep.parse_merges(text)


def test_sweep_configs_change_only_the_target_merges(tmp_path):
    written = sweep.write_sweep_configs(str(CONFIG), [200, 4000], 200, str(tmp_path))
    assert list(written) == [4000]  # 200: the config's own (reproduce.sh's model)
    derived, original = load_config(written[4000]), load_config(CONFIG)
    assert derived.bpe["mdn"].tgt_merges == 4000 and derived.merges("mdn", quick=True)["de"] == 4000
    assert derived.bpe["mdn"].src_merges == original.bpe["mdn"].src_merges and derived.data == original.data
    assert derived.bpe["baseline"] == original.bpe["baseline"] and derived.test_subsets() == original.test_subsets()
    joint = tmp_path / "joint.sh"
    joint.write_text(CONFIG.read_text() + "MDN_JOINT=1\n")
    with pytest.raises(ablation.AblationError, match="needs a separate target BPE"):
        sweep.sweep_config_text(str(joint), 4000)


def test_sweep_csv_table_and_plot(tmp_path, monkeypatch):
    for i, (n, key) in enumerate(((300, "sweep_tgt300"), (200, "bpe10k"))):
        _fake_checkpoint(tmp_path / key / "checkpoint_avg.pt", 500 + n, tgt_vocab=n + 50)
        _fake_scores(tmp_path / key, i)
    _fake_bench(tmp_path / "bpe_sweep" / "bench" / "cpu.json", {"bpe10k": [50.0], "sweep_tgt300": [40.0]})
    md, rows = sweep.build_sweep(str(tmp_path), {300: "sweep_tgt300", 200: "bpe10k"}, "cmd")
    assert [(r["tgt_merges"], r["key"], r["tgt_vocab"]) for r in rows] == [
        (200, "bpe10k", 250),
        (300, "sweep_tgt300", 350),
    ]
    assert rows[0]["valid_bleu"] == 11.0 and rows[1]["test_bleu"] == 20.0 and rows[1]["cpu_fast_sent_per_s"] == 80.0
    assert "| 200 | 250 | 0.00M | 11.00 | 21.00 | 50.0 | 100.0 |" in md
    sweep.write_csv(rows, str(tmp_path / "s.csv"))
    with open(tmp_path / "s.csv") as f:
        assert [(r["tgt_merges"], r["valid_bleu"]) for r in csv.DictReader(f)] == [("200", "11.0"), ("300", "10.0")]
    if sweep.plot(rows, str(tmp_path / "s.png")) is None:  # matplotlib installed
        assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert "matplotlib is not installed" in sweep.plot(rows, str(tmp_path / "t.png"))
    assert not (tmp_path / "t.png").exists()


# ------------------------------------------------------------------------------------------------
# the script: arguments and configs refused before any work, then --quick end to end


def _repo_with_config(tmp_path, extra: str, drop: str = "") -> Path:
    """A repository whose scripts are this one's and whose multi30k_en_de config is the shipped one with
    ``drop`` lines left out and ``extra`` appended (bash and mdn-prepare: the last assignment wins)."""
    repo = tmp_path / "repo"
    (repo / "mdn_fairseq" / "configs").mkdir(parents=True)
    (repo / "scripts").symlink_to(REPO / "scripts")
    lines = [line for line in CONFIG.read_text().splitlines() if not (drop and line.startswith(drop))]
    (repo / "mdn_fairseq" / "configs" / "multi30k_en_de.sh").write_text("\n".join(lines) + "\n" + extra)
    return repo


@pytest.mark.parametrize(
    "extra, drop, message",
    [
        ('ABLATION_ONE_HEAD="--decoder-attention-heads 3 --decoder-attention-dim 16"\n', "",
         "(flags of ABLATION_ONE_HEAD): --decoder-attention-dim (16) must be a positive multiple of "
         "--decoder-attention-heads (3)"),
        ("", "ABLATION_DEEP_ENCODER=", "ABLATION_DEEP_ENCODER is missing"),
    ],
    ids=["flags-that-do-not-combine", "missing-variable"],
)  # fmt: skip
def test_script_fails_before_any_training_naming_the_flag(tmp_path, extra, drop, message):
    repo = _repo_with_config(tmp_path, extra, drop)
    proc = run_ablation("multi30k_en_de", "--work", tmp_path / "w", script=repo / "scripts" / "ablation.sh")
    assert proc.returncode == 2 and message in proc.stderr and "nothing was trained" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["ablation"]  # no data, no training folder


@pytest.mark.parametrize("script", ["ablation.sh", "reproduce.sh", "training_strategies.sh"])
def test_help_is_the_whole_header_comment(script):
    lines = (REPO / "scripts" / script).read_text().splitlines()[1:]
    header = "\n".join(itertools.takewhile(lambda line: line.startswith("#"), lines)) + "\n"
    proc = subprocess.run(["bash", str(REPO / "scripts" / script), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == header


@pytest.mark.parametrize("script", ["ablation.sh", "reproduce.sh"])
def test_scripts_refuse_a_config_without_the_baseline_arch(tmp_path, script):
    repo = _repo_with_config(tmp_path, "", "BASELINE_ARCH=")
    proc = run_ablation("multi30k_en_de", "--work", tmp_path / "w", script=repo / "scripts" / script)
    assert proc.returncode == 2 and "BASELINE_ARCH is missing" in proc.stderr, proc.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bpe-sweep", "2000,x"], "--bpe-sweep takes a comma list of positive integers"),
        (["--bpe-sweep", "0,100"], "got '0,100'"),
        (["--bpe-sweep", "300,300"], "--bpe-sweep 300,300 names 300 twice"),
        (["--bpe-sweep", "--quick"], "--bpe-sweep needs a comma list of target merge counts"),
        (["--peers"], "--peers is reproduce.sh's"),
        (["--tables", "3"], "--tables takes 2, 5 or 2,5 (the paper's Tables 2 and 5), got '3'"),
        (["--tables"], "--tables needs 2, 5 or 2,5"),
        (["--tables", "2", "--bpe-sweep", "300"], "--tables and --bpe-sweep make different results"),
    ],
)
def test_script_refuses_bad_arguments_at_once(tmp_path, args, message):
    proc = run_ablation("multi30k_en_de", *args, "--work", tmp_path / "w")
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "w" / "data").exists()
    if "--tables" in args:  # refused before the config is read: not even the work folder is made
        assert not (tmp_path / "w").exists()


def _trained(work: Path):
    return {p.parent.name for p in work.glob("*/checkpoint_last.pt")}


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory, multi30k):
    """``ablation.sh multi30k_en_de --quick --bpe-sweep 300`` in a new work folder, the first run of this module's
    shared one: (work, CompletedProcess, the folders that had a trained model after it, its CSV rows)."""
    work = tmp_path_factory.mktemp("ablation") / "work"
    proc = run_ablation("multi30k_en_de", "--quick", "--bpe-sweep", "300", "--work", work, "--data", multi30k,
                        "--threads", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(work / "results" / "bpe_sweep.csv") as f:
        rows = [(r["tgt_merges"], r["key"]) for r in csv.DictReader(f)]
    return work, proc, sorted(_trained(work)), rows


@pytest.fixture(scope="module")
def quick_table2(quick_sweep, multi30k):
    """Then ``ablation.sh multi30k_en_de --quick --tables 2`` in the same work folder: (work, CompletedProcess, the
    folders it trained a model in, the files in its results folder then)."""
    work = quick_sweep[0]
    before = _trained(work)
    proc = run_ablation("multi30k_en_de", "--quick", "--tables", "2", "--work", work, "--data", multi30k,
                        "--threads", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = sorted(p.name for p in (work / "results").iterdir())
    return work, proc, sorted(_trained(work) - before), written


@pytest.fixture(scope="module")
def quick(quick_table2, multi30k):
    """Then ``ablation.sh multi30k_en_de --quick`` (both tables, reproduce.sh's rows included) in the same work
    folder, reusing Table 2's models: (work, CompletedProcess)."""
    work = quick_table2[0]
    proc = run_ablation("multi30k_en_de", "--quick", "--work", work, "--data", multi30k, "--threads", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc


@pytest.mark.slow
def test_ablation_quick_end_to_end(quick, multi30k):
    work, proc = quick
    for stage in ("A0", "A1", "A2", "A3", "A4", "A5"):
        assert f"] {stage} " in proc.stdout
    # the --tables 2 run before it (same work folder) trained Table 2's models: reused, not trained again
    assert "abl2_heads: trained (" in proc.stdout and "abl2_heads: fairseq-train" not in proc.stdout
    assert "abl5_heads: fairseq-train" in proc.stdout
    result = json.loads((work / "results" / "ablation.json").read_text())
    t2, t5 = result["tables"]["2"], result["tables"]["5"]
    assert [r["label"] for r in t2] == TABLE2 and [r["label"] for r in t5] == TABLE5
    for r in t2 + t5:
        assert r["params"] > 0 and r["cpu_fairseq_sent_per_s"] > 0 and r["cpu_fast_sent_per_s"] > 0
        for key in ("valid_bleu", "test_bleu"):
            assert isinstance(r[key], float) and 0 <= r[key] <= 100
    assert t5[-1]["key"] == "mdn" and t2[0]["key"] == t5[1]["key"] == "bpe10k"
    assert t5[5]["params"] < t5[1]["params"]  # the tricks shrink the decoder
    md = (work / "results" / "ablation.md").read_text()
    assert "## Table 2 analogue" in md and "## Table 5 analogue" in md and "not results" in md
    assert "Made by `bash scripts/ablation.sh multi30k_en_de --quick`" in md
    bench = json.loads((work / "ablation" / "bench" / "cpu.json").read_text())
    assert {r["model"] for r in bench["rows"]} == {t["key"] for t in result["plan"]["trainings"]}  # one run
    assert (work / "abl5_wd_init.pt").is_file()  # + WD: initialised from the teacher

    # a second run skips every stage: nothing trained, evaluated or benchmarked again
    # (models, init checkpoints, scores, the benchmark; mdn-prepare's own prepare.json is its business)
    ours = [*work.rglob("*.pt"), *work.rglob("scores.*.json"), work / "ablation" / "bench" / "cpu.json"]
    stamps = {p: p.stat().st_mtime for p in ours}
    again = run_ablation("multi30k_en_de", "--quick", "--work", work, "--data", multi30k, "--threads", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "fairseq-train" not in again.stdout and "abl5_no_dd: trained" in again.stdout
    assert "benchmark: done" in again.stdout
    assert stamps == {p: p.stat().st_mtime for p in stamps}


@pytest.mark.slow
def test_bpe_sweep_quick_writes_csv_and_plot(quick, multi30k):
    work, _ = quick
    proc = run_ablation("multi30k_en_de", "--quick", "--bpe-sweep", "200,300", "--work", work, "--data", multi30k,
                        "--threads", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(work / "results" / "bpe_sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["tgt_merges"], r["key"]) for r in rows] == [("200", "bpe10k"), ("300", "sweep_tgt300")]
    # 200 is + BPE 10K (the tables' model), 300 the first sweep's: both reused, nothing trained
    assert "bpe10k: trained (" in proc.stdout and "sweep_tgt300: trained (" in proc.stdout
    assert "fairseq-train" not in proc.stdout
    assert int(rows[1]["tgt_vocab"]) > int(rows[0]["tgt_vocab"])
    for r in rows:
        assert float(r["valid_bleu"]) >= 0 and float(r["cpu_fairseq_sent_per_s"]) > 0
    png = work / "results" / "bpe_sweep.png"
    if _has_matplotlib():
        assert png.read_bytes()[:4] == b"\x89PNG"
    else:
        assert "matplotlib is not installed" in proc.stdout


@pytest.mark.slow
def test_bpe_sweep_trains_only_its_points(quick_sweep):
    """A sweep without the config's own count needs reproduce.sh's data, not its models: only the points are
    trained (no Baseline, + BPE 10K or MDN)."""
    work, proc, trained, rows = quick_sweep
    assert "] S0 prepare" in proc.stdout and (work / "data" / "mdn" / "bin").is_dir()
    assert trained == ["sweep_tgt300"]
    assert rows == [("300", "sweep_tgt300")]


@pytest.mark.slow
def test_table_2_alone_trains_only_its_rows(quick_table2):
    """--tables 2 needs reproduce.sh's data and + BPE 10K, not its Baseline or MDN, nor Table 5's rows."""
    work, proc, trained, written = quick_table2
    assert "] A1 reproduce.sh's data (mdn-prepare) and + BPE 10K" in proc.stdout
    assert trained == ["abl2_ffn", "abl2_heads", "abl2_rank", "abl2_shallow", "bpe10k"]
    assert [n for n in written if n.startswith("ablation")] == ["ablation_table2.json", "ablation_table2.md"]
    result = json.loads((work / "results" / "ablation_table2.json").read_text())
    assert list(result["tables"]) == ["2"] and [r["label"] for r in result["tables"]["2"]] == TABLE2
    assert all(r["cpu_fast_sent_per_s"] > 0 for r in result["tables"]["2"])
    md = (work / "results" / "ablation_table2.md").read_text()
    assert "Made by `bash scripts/ablation.sh multi30k_en_de --quick --tables 2`" in md


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
