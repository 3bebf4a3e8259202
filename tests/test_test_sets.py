"""Several test sets per config (SPLITS test=MAIN,EXTRA,...): parsing, per-file downloads, extra sets
prepared as test1, test2, ... at their position, a set that cannot be had reported and recorded missing,
checksums, and the report's columns per set (mdn_fairseq/prepare, mdn_fairseq/report, mdn-report test-sets).
The end-to-end run with two sets is tests/test_recipe.py's quick reproduce."""

import gzip
import hashlib
import json

import pytest
from test_prepare import CONFIG, PAIRS, corpus, http_server, leftovers, prep, write_config  # noqa: F401
from test_recipe import _fake_checkpoint

from mdn_fairseq import report
from mdn_fairseq.cli.report import main as report_main
from mdn_fairseq.prepare import PrepareError, load_config

EXTRA = [("a brown dog jumps", "ein brauner Hund springt"), ("the blue sky", "der blaue Himmel")]
MORE = [("one", "eins"), ("two", "zwei"), ("three", "drei")]


def config_text(tests: str) -> str:
    """The test config (test_prepare.CONFIG) with ``test=TESTS``."""
    return CONFIG.replace(
        'SPLITS="train=train valid=valid test=test"', f'SPLITS="train=train valid=valid test={tests}"'
    )


def serve(folder, sets, listed=()):
    """Gzipped ``{stem}.{en,de}.gz`` of ``sets`` ({stem: pairs}) in ``folder`` and a sha256sum file listing them
    and the ``listed`` file names (not served, a checksum of nothing); returns the checksum file."""
    folder.mkdir(parents=True, exist_ok=True)
    sums = [f"{hashlib.sha256(b'').hexdigest()}  {name}" for name in listed]
    for stem, pairs in sets.items():
        for lang, i in (("en", 0), ("de", 1)):
            path = folder / f"{stem}.{lang}.gz"
            path.write_bytes(gzip.compress("".join(p[i] + "\n" for p in pairs).encode()))
            sums.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}")
    (folder / "sums.sha256").write_text("\n".join(sums) + "\n")
    return folder / "sums.sha256"


@pytest.fixture
def served(http_server, monkeypatch):  # noqa: F811  (test_prepare's fixture)
    """A local HTTP server as the Multi30k download source: (its folder, its URL)."""
    root, url = http_server
    monkeypatch.setenv("MDN_MULTI30K_URL", url)
    monkeypatch.setenv("MDN_MULTI30K_SHA256", str(root / "task1" / "raw" / "sums.sha256"))
    return root / "task1" / "raw", url


def two_sets(tmp_path, tests="test,extra", download="multi30k", out=None):
    """A Preparation of a local corpus (train, valid, test) whose config names the test sets ``tests``."""
    data = corpus(tmp_path / "data", PAIRS)
    p = prep(tmp_path, data_dir=data, text=config_text(tests), download=download)
    if out is not None:
        p.out = out
    return p, data


# ---------------------------------------------------------------- the config


def test_config_names_several_test_sets(tmp_path):
    cfg = load_config(write_config(tmp_path, text=config_text("test,extra,more")))
    assert cfg.splits["test"] == "test" and cfg.test_sets == ["test", "extra", "more"]
    assert cfg.test_subsets() == {"test": "test", "test1": "extra", "test2": "more"}
    single = load_config(write_config(tmp_path / "one"))
    assert single.test_sets == ["test"] and single.test_subsets() == {"test": "test"}
    for tests, message in (
        ("test,extra,test", "a test set is named twice"),
        ("test,", "expected train=STEM valid=STEM test=STEM"),
        ("test,a/b", "no '/'"),
    ):
        with pytest.raises(PrepareError, match=message):
            load_config(write_config(tmp_path, text=config_text(tests)))
    bad = CONFIG.replace("train=train ", "train=train,more ")
    with pytest.raises(PrepareError, match="only test may name several sets"):
        load_config(write_config(tmp_path, text=bad))


# ---------------------------------------------------------------- preparing them


def test_a_second_test_set_is_downloaded_when_not_local(tmp_path, served):
    folder, url = served
    serve(folder, {"extra": EXTRA})
    said = []
    p, data = two_sets(tmp_path, out=said.append)
    p.run_raw()
    p.run_test_set("test1", "extra")
    work = tmp_path / "work"
    assert p.extra == ["test1"] and not p.missing
    assert f"   downloading {url}/extra.en.gz" in said and f"   downloading {url}/extra.de.gz" in said
    assert sorted(f.name for f in (work / "download").iterdir()) == ["extra.de.gz", "extra.en.gz"]
    assert not (data / "extra.en.gz").exists()  # downloads go under WORK, never into the data folder
    assert (work / "raw" / "test1.de").read_text() == "ein brauner Hund springt\nder blaue Himmel\n"
    assert (work / "tok" / "test1.en").read_text() == "a brown dog jumps\nthe blue sky\n"
    record = p.state["stages"]["raw/test1"]
    assert record["name"] == "extra" and record["pairs"] == 2 and record["data"] == str(work / "download")
    # the main splits came from the data folder: nothing else was downloaded
    assert p.state["stages"]["raw"]["data"] == str(data) and "download" not in p.state["stages"]


def test_a_main_split_file_missing_locally_is_downloaded_alone(tmp_path, served):
    folder, _ = served
    serve(folder, {"valid": PAIRS})
    p, data = two_sets(tmp_path, tests="test")
    (data / "valid.de").unlink()
    record = p.run_raw()
    assert sorted(f.name for f in (tmp_path / "work" / "download").iterdir()) == ["valid.de.gz"]
    assert p.state["stages"]["download"]["files_fetched"] == 1 and record["splits"]["valid"]["pairs"] == 5


def test_a_missing_test_set_is_reported_and_the_others_go_on(tmp_path, served):
    folder, url = served
    serve(folder, {"more": MORE}, listed=["gone.en.gz", "gone.de.gz"])  # listed, but the server has no such file
    said = []
    p, data = two_sets(tmp_path, tests="test,gone,more", out=said.append)
    p.run_raw()
    p.run_test_set("test1", "gone")
    p.run_test_set("test2", "more")
    assert p.extra == ["test2"] and list(p.missing) == ["test1"] and p.missing["test1"]["name"] == "gone"
    (warning,) = [m for m in said if "WARNING" in m]
    assert "test set gone (test1) is missing: gone.en and gone.de (plain or .gz) not found in " in warning
    assert (
        str(data) in warning
        and f"download failed: {url}/gone.en.gz: " in warning
        and ": HTTP 404 File not found; pass --data DIR" in warning
    )
    assert "Going on without it" in warning and not leftovers(tmp_path / "work")
    assert (tmp_path / "work" / "raw" / "test2.en").read_text() == "one\ntwo\nthree\n"
    # without a download source the warning says so
    said.clear()
    p, data = two_sets(tmp_path / "none", tests="test,gone", download="none", out=said.append)
    p.run_test_set("test1", "gone")
    assert p.missing["test1"]["reason"] == (
        f"gone.en and gone.de (plain or .gz) not found in {data}, and DOWNLOAD=none cannot fetch single files"
    )


def test_the_main_test_set_missing_is_an_error_naming_it_and_the_folder(tmp_path, served):
    folder, url = served
    serve(folder, {}, listed=["gone.en.gz", "gone.de.gz"])
    p, data = two_sets(tmp_path, tests="gone,test")
    with pytest.raises(PrepareError) as e:
        p.run_raw()
    msg = str(e.value)
    assert msg.startswith(f"gone.en.gz, gone.de.gz not in {data}; download failed: {url}/gone.en.gz")
    assert "pass --data DIR" in msg and not (tmp_path / "work" / "raw").exists()


def test_a_checksum_mismatch_of_a_test_set_is_an_error_naming_the_file(tmp_path, served):
    folder, url = served
    sums = serve(folder, {"extra": EXTRA})
    sums.write_text(
        sums.read_text().replace(hashlib.sha256((folder / "extra.de.gz").read_bytes()).hexdigest(), "0" * 64)
    )
    p, _ = two_sets(tmp_path)
    p.run_raw()
    with pytest.raises(PrepareError, match=f"checksum mismatch for {url}/extra.de.gz") as e:
        p.run_test_set("test1", "extra")
    assert "missing" not in str(e.value) and not p.missing
    assert not (tmp_path / "work" / "download" / "extra.de.gz").exists() and not leftovers(tmp_path / "work")


@pytest.mark.slow
def test_every_test_set_is_binarised_at_its_position_and_recorded(tmp_path, served):
    """test1 downloaded, test2 missing, test3 local: fairseq-preprocess names the present ones test, test1,
    test2; test3's files are renamed to its position; prepare.json and mdn-report test-sets record all."""
    from fairseq.data import Dictionary, data_utils

    folder, _ = served
    serve(folder, {"extra": EXTRA}, listed=["gone.en.gz", "gone.de.gz"])
    said = []
    p, data = two_sets(tmp_path, tests="test,extra,gone,more", out=said.append)
    corpus(data, MORE, splits=("more",))
    p.run()
    work = tmp_path / "work"
    state = json.loads((work / "prepare.json").read_text())
    assert [(t["subset"], t["name"], t["missing"]) for t in state["test_sets"]] == [
        ("test", "test", False),
        ("test1", "extra", False),
        ("test2", "gone", True),
        ("test3", "more", False),
    ]
    assert [t.get("pairs") for t in state["test_sets"]] == [5, 2, None, 3]
    assert f"gone.en and gone.de (plain or .gz) not found in {data}" in state["test_sets"][2]["reason"]
    assert "gone.en.gz: HTTP 404 File not found" in state["test_sets"][2]["reason"]
    for name in ("baseline", "mdn"):
        assert state["bpe"][name]["pairs"] == {"train": 5, "valid": 5, "test": 5, "test1": 2, "test3": 3}
        bin_dir = work / name / "bin"
        tests = sorted(f.name.split(".")[0] for f in bin_dir.glob("test*.en-de.de.bin"))
        assert tests == ["test", "test1", "test3"]
        dictionary = Dictionary.load(str(bin_dir / "dict.de.txt"))
        for subset, n in (("test1", 2), ("test3", 3)):
            assert len(data_utils.load_indexed_dataset(str(bin_dir / f"{subset}.en-de.de"), dictionary)) == n
    assert "   test2 (gone): MISSING (" in "\n".join(said) and "   test3 (more): 3 pairs read, 0 empty removed" in said
    # a re-run skips what is done, and tries the missing set again
    said.clear()
    p, _ = two_sets(tmp_path, tests="test,extra,gone,more", out=said.append)
    p.run()
    assert sum(m.endswith("done (skipped)") for m in said) == 8 + 2 * 2 + 2 * 2  # main; test1, test3: raw, tok, 2 BPE
    assert any("WARNING: test set gone (test2) is missing" in m for m in said)


# ---------------------------------------------------------------- the report


SETS = [
    {"subset": "test", "name": "flickr16", "missing": False, "pairs": 5},
    {"subset": "test1", "name": "flickr17", "missing": False, "pairs": 4},
    {"subset": "test2", "name": "coco17", "missing": True, "reason": "coco17.en not found in /data; download failed"},
]


def fake_work(work, keys, sets=SETS):
    """A recipe work folder: prepare.json with ``sets`` and, per model key, an averaged checkpoint and scores
    for valid and each present set (BLEU 10 + model index + 10 * subset index; sacreBLEU one less)."""
    (work / "data").mkdir(parents=True)
    (work / "data" / "prepare.json").write_text(json.dumps({"test_sets": sets}))
    for i, key in enumerate(keys):
        (work / key).mkdir()
        _fake_checkpoint(work / key / "checkpoint_avg.pt", i)
        _fake_checkpoint(work / key / "checkpoint_last.pt", i, epoch=3, updates=50)
        for k, subset in enumerate(["valid"] + [t["subset"] for t in sets if not t["missing"]]):
            bleu = 10.0 + i + 10 * k
            scores = {"tok_bleu": bleu, "sacrebleu": bleu - 1, "sacrebleu_signature": "sig"}
            (work / key / f"scores.{subset}.json").write_text(json.dumps(scores))


def test_results_table_has_every_test_set_and_marks_the_missing_one(tmp_path):
    fake_work(tmp_path, ["baseline", "bpe10k", "mdn"])
    assert report.test_sets(str(tmp_path)) == SETS
    assert list(report.read_scores(str(tmp_path), "mdn")) == ["valid", "test", "test1"]
    md, result = report.build_table(str(tmp_path), {"TASK": "t", "SRC": "en", "TGT": "de"})
    head = next(line for line in md.splitlines() if line.startswith("| System"))
    assert (
        "| valid BLEU | flickr16 BLEU | flickr16 sacreBLEU | flickr17 BLEU | flickr17 sacreBLEU | coco17 BLEU | "
        "coco17 sacreBLEU | CPU sent/s (fairseq) |" in head
    )
    assert "| MDN | 0.00M | 12.00 | 22.00 | 21.00 | 32.00 | 31.00 | missing | missing | – | – | – | – |" in md
    assert (
        "*missing*: test set coco17 (subset test2) is named in the config but could not be prepared: "
        "coco17.en not found in /data; download failed" in md
    )
    mdn = result["rows"][2]
    assert mdn["test_bleu"] == 22.0 and mdn["test_sacrebleu"] == 21.0 and mdn["valid_bleu"] == 12.0
    assert mdn["test_sets"] == {
        "flickr16": {"subset": "test", "bleu": 22.0, "sacrebleu": 21.0},
        "flickr17": {"subset": "test1", "bleu": 32.0, "sacrebleu": 31.0},
        "coco17": {"subset": "test2", "missing": True},
    }
    assert result["test_sets"] == SETS and result["mdn_minus_teacher_bleu"] == {"flickr16": 1.0, "flickr17": 1.0}
    assert "MDN − teacher (+ BPE 10K) BLEU: flickr16 +1.00, flickr17 +1.00." in md
    # a present set's scores are required
    (tmp_path / "bpe10k" / "scores.test1.json").unlink()
    with pytest.raises(report.ReportError, match="bpe10k/scores.test1.json: missing"):
        report.build_table(str(tmp_path), {})


def test_strategies_table_has_every_test_set(tmp_path):
    keys = [key for key, _, _ in report.STRATEGY_ROWS]
    fake_work(tmp_path, keys, SETS[:2])
    md, result = report.build_strategies(str(tmp_path), {"TASK": "t", "BASELINE_ARCH": "a", "STUDENT_ARCH": "s"})
    assert "| valid BLEU | flickr16 BLEU | flickr16 sacreBLEU | flickr17 BLEU | flickr17 sacreBLEU |" in md
    assert (
        "| + WD | s, initialised from the teacher (translation_wd), NLL | 0.00M | 50 | 12.00 | 22.00 | 21.00 | 32.00 | 31.00 |"
        in md
    )
    assert result["rows"][2]["test_sets"]["flickr17"]["bleu"] == 32.0 and "missing" not in md


def test_a_work_folder_from_before_several_test_sets_has_one(tmp_path):
    assert report.test_sets(str(tmp_path)) == [{"subset": "test", "name": "test", "missing": False}]
    config = {"SPLITS": "train=train valid=val test=flickr16,flickr17"}
    assert report.test_sets(str(tmp_path), config)[0]["name"] == "flickr16"
    (tmp_path / "data").mkdir()
    old = {"settings": {"splits": {"train": "train", "valid": "val", "test": "test_2016_flickr"}}, "splits": {}}
    (tmp_path / "data" / "prepare.json").write_text(json.dumps(old))
    assert report.test_sets(str(tmp_path), config) == [{"subset": "test", "name": "test_2016_flickr", "missing": False}]


def test_mdn_report_test_sets_lists_them(tmp_path, capsys):
    (tmp_path / "prepare.json").write_text(json.dumps({"test_sets": SETS}))
    report_main(["test-sets", "--prepared", str(tmp_path)])
    assert capsys.readouterr().out == "test flickr16 present\ntest1 flickr17 present\ntest2 coco17 missing\n"
    with pytest.raises(SystemExit) as e:
        report_main(["test-sets", "--prepared", str(tmp_path / "nope")])
    assert e.value.code == 2 and "prepare.json" in capsys.readouterr().err
