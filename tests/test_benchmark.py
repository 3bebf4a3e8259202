"""mdn-bench in a fast mode: tiny synthetic models, one repeat; well-formed markdown, JSON, CSV and PNG."""

import csv
import json
import re

import pytest
import torch

from conftest import REPO, binarise, run_cli, train
from mdn_fairseq import bench
from mdn_fairseq.bench.inputs import make_batches, random_sentences, read_sentences
from mdn_fairseq.bench.options import parse_args
from mdn_fairseq.bench.synthetic import synthetic_dictionary
from mdn_fairseq.cli import bench as bench_cli
from mdn_fairseq.errors import MDNError

TINY = [
    "--synthetic",
    "mdn_transformer_tiny,mdn_tiny",
    "--src-vocab",
    "300",
    "--tgt-vocab",
    "200",
    "--batch-size",
    "4",
    "--num-sentences",
    "6",
    "--out-len",
    "6",
    "--repeats",
    "1",
    "--beam",
    "2",
    "--threads",
    "1",
    "--peak-size",
    "64",
]


def table_rows(markdown, header_start="| model | #params"):
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return lines[start], rows


def test_side_by_side_table_json_and_profile(tmp_path, capsys):
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    bench.run(TINY + ["--profile", "--int8", "--out-md", str(md), "--out-json", str(js)])
    text = md.read_text()
    assert text in capsys.readouterr().out
    header, rows = table_rows(text)
    assert header == "| model | #params | sent/s | tok/s | speedup | peak mem (MiB) |"
    assert [r[0] for r in rows] == [
        "mdn_transformer_tiny · fairseq",
        "mdn_transformer_tiny · fast",
        "mdn_tiny · fairseq",
        "mdn_tiny · fast",
        "mdn_transformer_tiny · fairseq · int8",
        "mdn_transformer_tiny · fast · int8",
        "mdn_tiny · fairseq · int8",
        "mdn_tiny · fast · int8",
    ]
    assert rows[0][4] == "1.00× (1.00–1.00)" and all("× (" in r[4] for r in rows)
    _, prof = table_rows(text, "| model | enc attn")
    assert len(prof) == 8 and all(len(r) == 8 for r in prof)

    result = json.loads(js.read_text())
    s = result["setting"]
    for key in ("hardware", "threads", "batch", "beam", "out_len", "torch", "repeats", "warmup", "device"):
        assert key in s
    assert (s["threads"], s["batch"], s["beam"], s["out_len"], s["repeats"], s["sentences"]) == (1, 4, 2, 6, 1, 6)
    assert s["torch"] == torch.__version__ and s["hardware"]
    r0 = result["rows"][0]
    assert r0["speedup"]["median"] == 1.0 and r0["tokens"] == 6 * 7  # fixed length 6 + EOS per sentence
    assert r0["sent_per_s"]["min"] <= r0["sent_per_s"]["median"] <= r0["sent_per_s"]["max"]
    prof = result["rows"][3]["profile_s"]
    assert set(prof) == {"enc attn", "enc FFN", "dec attn", "dec FFN", "output proj", "other", "total"}
    assert prof["enc attn"] > 0 and prof["dec attn"] > 0 and prof["dec FFN"] == 0  # mdn_tiny has no decoder FFN
    assert abs(sum(v for k, v in prof.items() if k != "total") - prof["total"]) < 1e-9

    # the roofline: every row's arithmetic against the peak of its precision, measured in the same run
    assert set(result["peaks"]) == {"fp32", "int8"} and all(p["gflop_per_s"] > 0 for p in result["peaks"].values())
    header, roof = table_rows(text, "| model | precision")
    assert [r[0] for r in roof] == [r[0] for r in rows] and all(len(r) == 9 for r in roof)
    assert [r[1] for r in roof] == ["fp32"] * 4 + ["int8"] * 4
    for rec in result["rows"]:
        peak = result["peaks"][rec["precision"]]["gflop_per_s"]
        seconds = sorted(rec["seconds"])[len(rec["seconds"]) // 2]
        assert rec["flops"] == sum(rec["flops_by_group"].values()) > 0
        assert rec["gflop_per_s"]["median"] == pytest.approx(rec["flops"] / seconds / 1e9)
        assert rec["pct_of_peak"] == pytest.approx(100 * rec["gflop_per_s"]["median"] / peak)
        assert rec["limit_s"] + rec["gap_s"] == pytest.approx(seconds)
        p = rec["profile_s"]  # the gap split adds up to the profiled pass's distance from its limit
        assert rec["gap_products_s"] + rec["gap_overhead_s"] == pytest.approx(p["total"] - rec["limit_s"])
    same = {r["model"]: r["flops"] for r in result["rows"][:4]}  # a model's arithmetic, whatever the generator
    assert all(r["flops"] == same[r["model"]] for r in result["rows"])
    assert result["rows"][3]["flops_by_group"]["dec FFN"] == 0
    _, gaps = table_rows(text, "| model | enc attn % of peak")
    assert len(gaps) == 8 and gaps[3][4] == "–"  # mdn_tiny has no decoder FFN: no share of peak


def test_reduced_precision_rows_are_well_formed(tmp_path):
    """--int8 and --bf16: own rows (or a note saying why a row is not run), each measured against the
    peak of its own precision, on the same sentences and fixed lengths as the fp32 rows."""
    from mdn_fairseq.bench.models import autocast_dtype

    result = bench.run(TINY + ["--int8", "--bf16", "--out-json", str(tmp_path / "t.json")])
    rows = {r["row"]: r for r in result["rows"]}
    bf16 = autocast_dtype("cpu") is not None
    for model in ("mdn_transformer_tiny", "mdn_tiny"):
        for gen in ("fairseq", "fast"):
            assert rows[f"{model} · {gen}"]["precision"] == "fp32"
            assert rows[f"{model} · {gen} · int8"]["precision"] == "int8"
            name = f"{model} · {gen} · bf16"
            if not bf16:
                assert name not in rows
            elif name not in rows:  # a generator that fails under autocast: a note, not a crash
                assert any(n.startswith(f"{name}: not run") for n in result["notes"])
            else:
                assert rows[name]["precision"] == "bf16" and rows[name]["variant"] == "bf16"
    if not bf16:
        assert any("no bf16 rows" in n for n in result["notes"])
    for r in rows.values():
        assert r["tokens"] == 6 * 7 and r["sentences"] == 6
        assert r["flops"] == rows[r["model"] + " · fairseq"]["flops"]  # the same arithmetic in any precision
        assert r["peak_gflop_per_s"] == result["peaks"][r["precision"]]["gflop_per_s"]
    assert set(result["peaks"]) == {"fp32", "int8"} | ({"bf16"} if bf16 else set())


def test_latency_batch_one(tmp_path):
    md = tmp_path / "t.md"
    result = bench.run(TINY + ["--latency", "--latency-sentences", "3", "--out-md", str(md)])
    lat = result["latency"]
    assert [r["row"] for r in lat] == [r["row"] for r in result["rows"]]
    for r in lat:
        assert r["sentences"] == 3 and len(r["runs_ms"]) == 3  # 3 sentences x 1 repeat, one at a time
        assert 0 < min(r["runs_ms"]) <= r["p50_ms"] <= r["p95_ms"] <= max(r["runs_ms"])
    header, rows = table_rows(md.read_text(), "| model | p50 ms")
    assert header == "| model | p50 ms | p95 ms | mean ms |" and len(rows) == 4


def test_bleu_of_a_row():
    from mdn_fairseq.bench.quality import row_bleu

    d = synthetic_dictionary(10)
    hyps = {0: torch.tensor([4, 5, 6, 7, 2]), 1: torch.tensor([8, 9, 4, 5, 2])}
    row = type("R", (), {"hypotheses": hyps, "name": "r", "model": type("M", (), {"tgt_dict": d})})()
    assert row_bleu(row, ["w0 w1 w2 w3", "w4 w5 w0 w1"])["bleu"] == pytest.approx(100)
    assert row_bleu(row, ["w0 w1 w2 w3", "x y z w"])["bleu"] < 100
    with pytest.raises(MDNError, match="3 references but r translated 2"):
        row_bleu(row, ["a", "b", "c"])


@pytest.mark.parametrize("kind, values", [("batch", "2,4"), ("beam", "1,3"), ("bpe", "100,250"), ("srclen", "5,12")])
def test_sweeps_write_csv_and_png(tmp_path, kind, values):
    csv_path = tmp_path / f"{kind}.csv"
    result = bench.run(
        TINY
        + [
            "--generator",
            "fast",
            "--sweep",
            kind,
            "--sweep-values",
            values,
            "--out-csv",
            str(csv_path),
            "--out-json",
            str(tmp_path / "s.json"),
        ]
    )
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [r[kind] for r in rows] == [v for v in values.split(",") for _ in range(2)]
    assert {r["row"] for r in rows} == {"mdn_transformer_tiny · fast", "mdn_tiny · fast"}
    assert all(float(r["sent_per_s"]) > 0 for r in rows)
    assert [float(r["speedup"]) for r in rows][::2] == [1.0, 1.0]
    png = tmp_path / f"{kind}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["sweep"]["png"] == str(png)
    if kind == "bpe":  # the target vocabulary changes the model
        params = [int(r["params"]) for r in rows if r["row"] == "mdn_tiny · fast"]
        assert params[0] < params[1]
    assert all(float(r["gflop_per_s"]) > 0 and float(r["pct_of_peak"]) > 0 for r in rows)
    if kind == "srclen":  # sentences of exactly 5, then 12 tokens: the encoder's arithmetic grows with them
        from mdn_fairseq.bench.flops import count_flops
        from mdn_fairseq.bench.synthetic import build_synthetic

        model = build_synthetic("mdn_tiny", 300, 200)
        points = [p for p in result["sweep"]["points"] if p["row"] == "mdn_tiny · fast"]
        assert [p["flops"] for p in points] == [sum(count_flops(model, [n] * 6, [7] * 6, 2).values()) for n in (5, 12)]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--synthetic", "mdn_tiny", "--device", "cuda"], "--device cuda: CUDA is not available"),
        (["--synthetic", "mdn_tiny", "--fp16"], "--fp16 needs --device cuda"),
        (["--synthetic", "mdn_tiny", "--path", "x.pt"], "either --synthetic"),
        ([], "either --synthetic"),
        (["--path", "x.pt"], "--path needs --data"),
        (["--path", "x.pt", "--data", "d", "--input", "i", "--sweep", "bpe"], "--sweep bpe"),
        (["--synthetic", "mdn_tiny", "--generator", "beam"], "--generator takes"),
        (
            ["--path", "x.pt", "--path", "y.pt", "--data", "d", "--data", "e", "--data", "f", "--input", "i"],
            "--data given 3 times for 2 --path",
        ),
        (["--path", "x.pt", "--path", "y.pt", "--data", "d", "--input", "i", "--name", "a"], "--name given 1 times"),
        (["--path", "x.pt", "--data", "d", "--input", "no/such.txt"], "--input no/such.txt: no such file"),
        (["--synthetic", "mdn_tiny", "--sweep-values", "1,2"], "--sweep-values needs --sweep"),
        (["--synthetic", "mdn_tiny", "--sweep", "batch", "--sweep-values", "a"], "comma-separated integers"),
        (["--synthetic", "mdn_tiny", "--reference", "r.txt"], "--reference needs --path"),
        (["--path", "x.pt", "--data", "d", "--input", "i", "--sweep", "srclen"], "--sweep srclen"),
        (["--synthetic", "mdn_tiny", "--sweep", "srclen", "--sweep-values", "1"], "must be >= 2"),
        (["--synthetic", "mdn_tiny", "--sweep", "beam", "--latency"], "--sweep and --latency are separate"),
        (["--synthetic", "mdn_tiny", "--sweep", "srclen", "--floor"], "--sweep and --floor are separate"),
        (["--synthetic", "mdn_tiny", "--peak-size", "8"], "--peak-size 8: must be >= 16"),
        (["--synthetic", "mdn_tiny", "--latency-sentences", "0"], "--latency-sentences 0: must be >= 1"),
    ],
)
def test_bad_arguments_name_the_flag(argv, message, capsys):
    if "cuda" in message and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(MDNError, match=re.escape(message)):
        bench.run(argv)
    with pytest.raises(SystemExit) as e:
        bench_cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("mdn-bench: ") and message in err


@pytest.mark.parametrize("flag", ["--batch-size", "--batch"])
def test_batch_size_takes_fairseqs_name_and_the_old_spelling(flag, capsys):
    args = parse_args(["--synthetic", "mdn_tiny", flag, "8"])
    assert args.batch_size == 8 and args.num_sentences is None
    with pytest.raises(SystemExit) as e:
        bench_cli.main(["--synthetic", "mdn_tiny", flag, "0"])
    assert e.value.code == 2 and "mdn-bench: --batch-size 0: must be >= 1" in capsys.readouterr().err


def test_unknown_architecture_is_a_clean_cli_error():
    with pytest.raises(MDNError, match="--synthetic: unknown architecture 'nope'"):
        bench.run(["--synthetic", "nope"])
    proc = run_cli(["mdn-bench", "--synthetic", "nope", "--threads", "1"], ok=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("mdn-bench: --synthetic: unknown architecture 'nope'")
    assert "Traceback" not in proc.stderr


def test_empty_input_names_the_flag(tmp_path):
    (tmp_path / "empty.en").write_text("\n\n", encoding="utf-8")
    with pytest.raises(MDNError, match="--input .*empty.en: no sentences"):
        read_sentences(str(tmp_path / "empty.en"), synthetic_dictionary(10))


def test_random_sentences_and_batches():
    sents = random_sentences(50, 100, seed=3)
    assert [s.tolist() for s in sents] == [s.tolist() for s in random_sentences(50, 100, seed=3)]
    assert all(20 <= len(s) <= 30 and s[-1] == 2 and s[:-1].min() >= 4 and s.max() < 100 for s in sents)
    batches = make_batches(sents, 16, pad=1, eos=2)
    assert [len(b["id"]) for b in batches] == [16, 16, 16, 2]
    assert sorted(i for b in batches for i in b["id"].tolist()) == list(range(50))
    src = batches[0]["net_input"]["src_tokens"]
    assert (src[:, -1] == 2).all()  # left-padded


@pytest.mark.slow
def test_checkpoints_and_shell_wrapper(tmp_path, multi30k):
    binarise(tmp_path, multi30k, {"train": ("train", 200), "valid": ("val", 20)})
    train(
        tmp_path,
        "mdn_tiny",
        "ck",
        "--lr",
        "0.002",
        "--max-tokens",
        "2000",
        "--max-update",
        "2",
        "--no-epoch-checkpoints",
        "--disable-validation",
    )
    ckpt = str(tmp_path / "ck" / "checkpoint_last.pt")
    out = tmp_path / "ck.json"
    (tmp_path / "valid2.en").write_text((tmp_path / "valid.en").read_text(encoding="utf-8"), encoding="utf-8")
    # the old spelling --batch, as scripts written before --batch-size pass it
    proc = run_cli(
        [
            "bash",
            REPO / "scripts" / "benchmark.sh",
            "--path",
            ckpt,
            "--path",
            ckpt,
            "--data",
            str(tmp_path / "bin"),
            "--input",
            str(tmp_path / "valid.en"),
            "--input",
            str(tmp_path / "valid2.en"),
            "--name",
            "one",
            "--name",
            "two",
            "--batch",
            "8",
            "--beam",
            "2",
            "--max-len-b",
            "10",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--generator",
            "fast",
            "--out-json",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert [r["row"] for r in result["rows"]] == ["one · fast", "two · fast"]
    assert result["rows"][0]["sentences"] == 20 and result["setting"]["out_len"] is None
    assert "| two · fast |" in proc.stdout


@pytest.mark.slow
def test_checkpoint_rows_report_bleu(tmp_path, multi30k):
    """A trained plain Transformer checkpoint: fp32, int8, bf16 (and CTranslate2, when installed) rows
    translate the same sentences, each with its BLEU against --reference."""
    import importlib.util

    binarise(tmp_path, multi30k, {"train": ("train", 200), "valid": ("val", 12)})
    train(tmp_path, "mdn_transformer_tiny", "ck", "--lr", "0.002", "--max-tokens", "2000", "--max-update", "2",
          "--no-epoch-checkpoints", "--disable-validation")  # fmt: skip
    ct2 = ["--ctranslate2"] if importlib.util.find_spec("ctranslate2") else []
    result = bench.run(
        ["--path", str(tmp_path / "ck" / "checkpoint_last.pt"), "--data", str(tmp_path / "bin"), "--input",
         str(tmp_path / "valid.en"), "--reference", str(tmp_path / "valid.de"), "--name", "tiny", "--int8",
         "--bf16", "--generator", "fairseq", "--batch-size", "4", "--beam", "2", "--max-len-b", "8", "--repeats",
         "1", "--threads", "1", "--peak-size", "64", *ct2]
    )  # fmt: skip
    rows = {r["row"]: r for r in result["rows"]}
    assert {"tiny · fairseq", "tiny · fairseq · int8"} <= set(rows)
    if ct2:
        assert {"tiny · ctranslate2", "tiny · ctranslate2 · int8"} <= set(rows)
    for r in rows.values():
        assert r["sentences"] == 12 and 0 <= r["bleu"] <= 100 and "tok:none" in r["bleu_signature"]
    assert result["setting"]["out_len"] is None
