"""mdn-prepare (mdn_fairseq/prepare/, mdn_fairseq/cli/prepare.py): config parsing, input checks, filters,
downloads, the torch-free import, and the slow ones: an end-to-end --quick run on Multi30k and a --task run
from an installed wheel (fairseq-preprocess runs)."""

import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import sys
import tarfile
import threading
from functools import partial
from pathlib import Path

import pytest

from conftest import REPO, read_slice, run_cli
from mdn_fairseq.cli.prepare import main as prepare_main
from mdn_fairseq.errors import MDNError
from mdn_fairseq.prepare import (
    BpeSetting,
    Preparation,
    PrepareError,
    config_path_for_task,
    known_tasks,
    load_config,
    read_config,
    shipped_configs,
    stages,
)
from mdn_fairseq.prepare.download import download_wmt14
from mdn_fairseq.prepare.text import clean_line, drop_empty, length_filter, length_verdict, read_parallel
from mdn_fairseq.prepare.tokenise import (
    MOSES_OPTIONS,
    ChunkMapper,
    segment_chinese,
    tokenize_line,
    tokenizer_description,
)

CONFIG = """\
# test task: a tiny parallel corpus
# --data DIR with {train,valid,test}.{en,de}
TASK=tiny
SRC=en
TGT=de
DATA=%(data)s
SPLITS="train=train valid=valid test=test"
DOWNLOAD=%(download)s
BASELINE_JOINT=1
BASELINE_SRC_MERGES=50
BASELINE_TGT_MERGES=50
MDN_JOINT=0
MDN_SRC_MERGES=40
MDN_TGT_MERGES=20
MAX_LEN=250
MAX_RATIO=1.5
QUICK_TRAIN_LINES=4
QUICK_SRC_MERGES=10
QUICK_TGT_MERGES=5
"""


def write_config(tmp_path, data="", download="none", text=None, src="en", tgt="de"):
    path = tmp_path / "configs" / "tiny.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = (text or CONFIG) % {"data": data, "download": download}
    path.write_text(body.replace("SRC=en", f"SRC={src}").replace("TGT=de", f"TGT={tgt}"), encoding="utf-8")
    return path


def write_lines(path, lines, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def corpus(folder, pairs, splits=("train", "valid", "test"), src="en", tgt="de", gz=False):
    """A folder with the same ``pairs`` as every split."""
    for split in splits:
        suffix = ".gz" if gz else ""
        write_lines(folder / f"{split}.{src}{suffix}", [s for s, _ in pairs], gz)
        write_lines(folder / f"{split}.{tgt}{suffix}", [t for _, t in pairs], gz)
    return folder


PAIRS = [
    ("a small dog runs .", "ein kleiner Hund rennt ."),
    ("two men", "zwei Männer"),
    ("a cat sleeps", "eine Katze schläft"),
    ("the sun", "die Sonne"),
    ("a red car", "ein rotes Auto"),
]


def prep(tmp_path, data_dir=None, quick=False, **cfg_kwargs):
    cfg = load_config(write_config(tmp_path, **cfg_kwargs))
    return Preparation(cfg, tmp_path / "work", data=data_dir, quick=quick, workers=1, out=lambda m: None)


def leftovers(folder):
    return sorted(str(p) for p in Path(folder).rglob("*") if p.name.endswith((".tmp", ".part")))


# ---------------------------------------------------------------- configuration


def test_read_config_strips_quotes_and_skips_comments(tmp_path):
    path = tmp_path / "c.sh"
    path.write_text("# a comment\n\n  # indented comment\nA=1\nB=\"x y=z\"\nC=''\nD='q r'\nE=\nA=2\n")
    assert read_config(path) == {"A": "2", "B": "x y=z", "C": "", "D": "q r", "E": ""}


@pytest.mark.parametrize("line", ["FOO = bar", "FOO=a b", "FOO=bar # comment", "FOO=$HOME", 'FOO="a', "export FOO=1"])
def test_read_config_rejects_a_malformed_line_with_file_and_line(tmp_path, line):
    path = tmp_path / "c.sh"
    path.write_text(f"# header\nA=1\n{line}\n")
    with pytest.raises(PrepareError) as e:
        read_config(path)
    assert f"{path}:3:" in str(e.value) and repr(line) in str(e.value)


def test_the_shipped_configs_load():
    assert known_tasks() == [
        "multi30k_en_de",
        "multi30k_en_de_small",
        "multi30k_en_fr",
        "multi30k_en_fr_small",
        "nist12_zh_en",
        "wmt14_en_de",
        "wmt14_en_fr",
    ]
    cfg = load_config(REPO / "configs" / "multi30k_en_de.sh")
    assert (cfg.src, cfg.tgt, cfg.download) == ("en", "de", "multi30k")
    assert cfg.splits == {"train": "train", "valid": "val", "test": "test_2016_flickr"}
    assert cfg.test_sets == ["test_2016_flickr", "test_2017_flickr"]
    assert cfg.test_subsets() == {"test": "test_2016_flickr", "test1": "test_2017_flickr"}
    assert cfg.data == (REPO / ".." / "shared" / "data" / "multi30k").resolve()
    assert cfg.bpe["baseline"] == BpeSetting(True, 6000, 6000)
    assert cfg.bpe["mdn"] == BpeSetting(False, 6000, 2000)
    assert (cfg.max_len, cfg.max_ratio, cfg.quick_train_lines) == (250, 1.5, 800)
    nist = load_config(REPO / "configs" / "nist12_zh_en.sh")
    assert nist.data is None and nist.download == "none" and nist.src == "zh"
    for task in known_tasks():
        assert load_config(config_path_for_task(task)).task == task
    # --task reads the package data; the checkout's configs/ is a link to it, and both give the same DATA
    shipped = config_path_for_task("multi30k_en_de")
    assert Path(shipped).parent == Path(shipped_configs()) == REPO / "mdn_fairseq" / "configs"
    assert (REPO / "configs").resolve() == (REPO / "mdn_fairseq" / "configs").resolve()
    assert load_config(shipped).data == cfg.data
    # the tokeniser settings are part of prepare.json's fingerprint: their description must not drift
    assert MOSES_OPTIONS == {"escape": False, "aggressive_dash_splits": False}
    assert tokenizer_description("zh") == "sacremoses escape=False aggressive_dash_splits=False after jieba"


def test_config_parsing_does_not_need_torch(tmp_path):
    """A process where torch cannot be imported imports mdn_fairseq.prepare and reads the configs."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from mdn_fairseq.prepare import config_path_for_task, known_tasks, load_config\n"
        "cfg = load_config(config_path_for_task('wmt14_en_de'))\n"
        "print(cfg.task, cfg.src, cfg.tgt, cfg.bpe['mdn'].tgt_merges, len(known_tasks()))\n"
        "print(sorted(m for m, mod in sys.modules.items() if mod is not None and m.split('.')[0] in "
        "('torch', 'fairseq', 'mdn_fairseq') and not m.startswith(('mdn_fairseq.prepare', 'fairseq.version'))))\n"
    )
    out = run_cli([sys.executable, "-c", code], cwd=tmp_path).stdout.splitlines()
    assert out == ["wmt14_en_de en de 10000 7", "['mdn_fairseq', 'mdn_fairseq.errors', 'mdn_fairseq.files']"]


def test_config_with_a_bad_value_names_the_key(tmp_path):
    path = write_config(tmp_path, text=CONFIG.replace("MAX_LEN=250", "MAX_LEN=lots"))
    with pytest.raises(PrepareError, match=r"MAX_LEN='lots' is not an integer"):
        load_config(path)
    path = write_config(tmp_path, text=CONFIG.replace("MDN_JOINT=0\n", ""))
    with pytest.raises(PrepareError, match="MDN_JOINT is missing"):
        load_config(path)


def test_input_errors_are_mdn_errors_and_exit_2(tmp_path, capsys):
    assert issubclass(PrepareError, MDNError)
    config = write_config(tmp_path)  # DATA empty, no download
    with pytest.raises(SystemExit) as e:
        prepare_main(["--config", str(config), "--work", str(tmp_path / "w"), "--workers", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mdn-prepare: DATA is empty in {config} and tiny cannot be downloaded: pass --data DIR")
    with pytest.raises(SystemExit) as e:
        prepare_main(["--config", str(config), "--work", str(tmp_path / "w"), "--workers", "0"])
    assert e.value.code == 2 and capsys.readouterr().err == "mdn-prepare: --workers 0: must be at least 1\n"


def test_unknown_task_lists_the_known_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        prepare_main(["--task", "wmt99_xx_yy", "--work", str(tmp_path / "w")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mdn-prepare: unknown task 'wmt99_xx_yy'")
    for task in ("multi30k_en_de", "multi30k_en_fr", "nist12_zh_en", "wmt14_en_de", "wmt14_en_fr"):
        assert task in err
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------- checks and filters


def test_length_filter_boundaries():
    def pair(ns, nt):
        return " ".join(["x"] * ns), " ".join(["y"] * nt)

    kept, stats = length_filter([pair(5, 5), pair(6, 5), pair(5, 6), pair(6, 6)], max_len=5, max_ratio=100)
    assert kept == [pair(5, 5)] and stats == {"too_short": 0, "too_long": 3, "bad_ratio": 0}
    # ratio exactly 1.5 is kept (as clean-corpus-n: removed only above), in both directions
    pairs = [pair(3, 2), pair(2, 3), pair(7, 4), pair(4, 7), pair(300, 2), pair(0, 3), pair(1, 1)]
    kept, stats = length_filter(pairs, max_len=250, max_ratio=1.5)
    assert kept == [pair(3, 2), pair(2, 3), pair(1, 1)]
    assert stats == {"too_short": 1, "too_long": 1, "bad_ratio": 2}
    # subwords, not characters: "a@@ b" is two tokens
    assert length_verdict("a@@ b@@ c", "abc", max_len=2, max_ratio=10) == "too_long"
    # the ratio is taken on the words when they are given: BPE settings keep the same pairs
    assert length_verdict("a b", "x@@ y@@ z@@ w", max_len=250, max_ratio=1.5) == "bad_ratio"
    assert length_verdict("a b", "x@@ y@@ z@@ w", max_len=250, max_ratio=1.5, words=("a b", "xyzw yy")) is None
    assert length_verdict("a b c d", "x", max_len=250, max_ratio=1.5, words=("a b c d", "x")) == "bad_ratio"
    kept, stats = length_filter([("a b", "x@@ y@@ z")], 250, 1.5, word_pairs=[("a b", "xyz w")])
    assert kept == [("a b", "x@@ y@@ z")] and stats["bad_ratio"] == 0


def test_drop_empty_counts_blank_pairs():
    rows = [("a", "b"), ("", "b"), ("a", "   "), ("\t", "x"), ("a", "\u3000"), ("c", "d"), ("e", "f", "")]
    kept, removed = drop_empty(rows)
    assert kept == [("a", "b"), ("c", "d")] and removed == 5
    kept, removed = drop_empty(rows, columns=(0, 1))  # the extra column (a reference) does not count
    assert kept == [("a", "b"), ("c", "d"), ("e", "f", "")] and removed == 4


def test_empty_lines_are_removed_counted_and_recorded(tmp_path):
    data = tmp_path / "data"
    corpus(data, PAIRS)
    write_lines(data / "train.en", ["one", "", "three", "  ", "five", "six"])
    write_lines(data / "train.de", ["eins", "zwei", "", "vier", "fünf", "sechs"], gz=False)
    p = prep(tmp_path, data_dir=data)
    record = p.run_raw()
    assert record["splits"]["train"] == {"read": 6, "empty_removed": 3, "pairs": 3, "references": 1}
    assert record["splits"]["valid"] == {"read": 5, "empty_removed": 0, "pairs": 5, "references": 1}
    work = tmp_path / "work"
    assert (work / "raw" / "train.en").read_text() == "one\nfive\nsix\n"
    assert (work / "raw" / "train.de").read_text() == "eins\nfünf\nsechs\n"
    assert json.loads((work / "prepare.json").read_text())["stages"]["raw"]["splits"]["train"]["empty_removed"] == 3


def test_a_split_with_only_empty_pairs_is_an_error(tmp_path):
    data = corpus(tmp_path / "data", PAIRS)
    write_lines(data / "test.en", ["", "x", " ", "", ""])
    write_lines(data / "test.de", ["a", "", "b", "c", "\t"])
    with pytest.raises(PrepareError, match=r"split test: all 5 pairs .* empty"):
        prep(tmp_path, data_dir=data).run_raw()
    assert not (tmp_path / "work" / "raw" / "train.en").exists() and not leftovers(tmp_path / "work")


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path):
    data = corpus(tmp_path / "data", PAIRS, gz=True)
    write_lines(data / "valid.de.gz", ["a", "b", "c"], gz=True)
    with pytest.raises(PrepareError) as e:
        prep(tmp_path, data_dir=data).run_raw()
    msg = str(e.value)
    assert f"{data / 'valid.en.gz'} has 5 lines" in msg and f"{data / 'valid.de.gz'} has 3 lines" in msg
    assert not (tmp_path / "work" / "raw").exists() or not any((tmp_path / "work" / "raw").iterdir())
    # the limit of --quick does not hide a mismatch inside the slice, and counts are of the whole files
    with pytest.raises(PrepareError, match="has 5 lines.*has 3 lines"):
        list(read_parallel([data / "valid.en.gz", data / "valid.de.gz"], limit=4))
    assert len(list(read_parallel([data / "valid.en.gz", data / "valid.de.gz"], limit=3))) == 3


def test_invalid_utf8_names_the_file_line_and_byte(tmp_path):
    data = corpus(tmp_path / "data", PAIRS)
    (data / "train.de").write_bytes(b"eins\nzwei\n" + b"caf\xe9 au lait\n" + b"vier\nf\xc3\xbcnf\n")
    with pytest.raises(PrepareError) as e:
        prep(tmp_path, data_dir=data).run_raw()
    msg = str(e.value)
    assert f"{data / 'train.de'}: line 3: invalid UTF-8 at byte 3" in msg and "iconv" in msg
    assert not leftovers(tmp_path / "work") and not (tmp_path / "work" / "raw" / "train.en").exists()


def test_missing_input_file_names_split_language_and_hint(tmp_path):
    data = corpus(tmp_path / "data", PAIRS)
    (data / "valid.de").unlink()
    with pytest.raises(PrepareError) as e:
        prep(tmp_path, data_dir=data).run_raw()
    msg = str(e.value)
    assert "split valid (de)" in msg and str(data / "valid.de") in msg and "--data DIR" in msg


def test_missing_folder_without_download_explains_the_layout(tmp_path):
    with pytest.raises(PrepareError) as e:
        prep(tmp_path).run_raw()
    msg = str(e.value)
    assert "DATA is empty" in msg and "--data DIR" in msg and "# --data DIR with {train,valid,test}.{en,de}" in msg


def test_sha256sums_in_the_data_folder_are_checked(tmp_path):
    data = corpus(tmp_path / "data", PAIRS, gz=True)
    good = hashlib.sha256((data / "train.en.gz").read_bytes()).hexdigest()
    (data / "SHA256SUMS").write_text(f"{good}  train.en.gz\n{'0' * 64}  valid.de.gz\n")
    with pytest.raises(PrepareError) as e:
        prep(tmp_path, data_dir=data).run_raw()
    assert f"{data / 'valid.de.gz'}: SHA256 mismatch" in str(e.value) and str(data / "SHA256SUMS") in str(e.value)
    digest = hashlib.sha256((data / "valid.de.gz").read_bytes()).hexdigest()
    (data / "SHA256SUMS").write_text(f"{good}  train.en.gz\n{digest} *valid.de.gz\n")
    assert prep(tmp_path, data_dir=data).run_raw()["splits"]["valid"]["pairs"] == 5


def test_multiple_references(tmp_path):
    data = corpus(tmp_path / "data", PAIRS, splits=("train", "valid"), src="zh", tgt="en")
    write_lines(data / "test.zh", ["甲", "乙", "", "丁"])
    write_lines(data / "test.en0", ["a0", "b0", "c0", "d0"])
    write_lines(data / "test.en1", ["a1", "b1", "c1", ""])  # an empty extra reference keeps its pair
    write_lines(data / "test.en2.gz", ["a2", "b2", "c2", "d2"], gz=True)
    record = prep(tmp_path, data_dir=data, src="zh", tgt="en").run_raw()
    assert record["splits"]["test"] == {"read": 4, "empty_removed": 1, "pairs": 3, "references": 3}
    raw = tmp_path / "work" / "raw"
    assert (raw / "test.zh").read_text() == "甲\n乙\n丁\n"
    assert (raw / "test.en").read_text() == "a0\nb0\nd0\n"
    assert (raw / "test.en.ref1").read_text() == "a1\nb1\n\n"
    assert (raw / "test.en.ref2").read_text() == "a2\nb2\nd2\n"
    assert not (raw / "train.en.ref1").exists()
    # a reference with another length is an error naming it
    write_lines(data / "test.en1", ["a1", "b1"])
    shutil.rmtree(raw)
    with pytest.raises(PrepareError, match=r"test\.en1 has 2 lines"):
        prep(tmp_path / "again", data_dir=data, src="zh", tgt="en").run_raw()


def test_jieba_segments_chinese_before_moses():
    pytest.importorskip("jieba")
    assert segment_chinese("我爱北京天安门") == "我 爱 北京 天安门"
    assert tokenize_line("我爱北京天安门,你好!", "zh") == "我 爱 北京 天安门 , 你好 !"
    assert tokenize_line('Don\'t stop-gaps, "ok"?', "en") == 'Don \'t stop-gaps , " ok " ?'


def test_worker_processes_keep_the_line_order():
    pairs = [(f"line {i}, with a comma", f"die Zeile {i}, bitte.") for i in range(25)]
    mapper = ChunkMapper(workers=2, chunk_lines=3)
    try:
        out = list(mapper.map("tok", ("en", "de"), iter(pairs)))
        assert mapper.pool is not None  # 9 chunks: the pool was used
    finally:
        mapper.close()
    assert out == [(f"line {i} , with a comma", f"die Zeile {i} , bitte .") for i in range(25)]


def test_stray_line_breaks_inside_a_line_become_spaces(tmp_path):
    assert clean_line(" a\rb\u2028c\x0bd ") == "a b c d"
    path = tmp_path / "f"
    path.write_bytes(b"\xef\xbb\xbfhello\r\nworld\n")  # BOM and CRLF
    assert [row for _, row in read_parallel([path])] == [("hello",), ("world",)]


# ---------------------------------------------------------------- downloads


def fake_multi30k(folder, pairs=PAIRS):
    """Gzipped Multi30k-named files (en, de) and their sha256sum file."""
    stems = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
    sums = []
    for stem in stems.values():
        for lang, idx in (("en", 0), ("de", 1)):
            path = write_lines(folder / f"{stem}.{lang}.gz", [p[idx] for p in pairs], gz=True)
            sums.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}")
    (folder / "sums.sha256").write_text("\n".join(sums) + "\n")
    return folder / "sums.sha256"


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/task1/raw"
    server.shutdown()
    server.server_close()


def multi30k_prep(tmp_path):
    text = CONFIG.replace(
        'SPLITS="train=train valid=valid test=test"', 'SPLITS="train=train valid=val test=test_2016_flickr"'
    )
    return prep(tmp_path, text=text, download="multi30k", data="")


def test_multi30k_download_from_a_local_http_server(tmp_path, http_server, monkeypatch):
    root, url = http_server
    sums = fake_multi30k(root / "task1" / "raw")
    monkeypatch.setenv("MDN_MULTI30K_URL", url)
    monkeypatch.setenv("MDN_MULTI30K_SHA256", str(sums))
    p = multi30k_prep(tmp_path)
    record = p.run_raw()
    assert record["splits"]["test"]["pairs"] == 5
    down = tmp_path / "work" / "download"
    assert sorted(f.name for f in down.iterdir()) == sorted(
        f"{s}.{lang}.gz" for s in ("train", "val", "test_2016_flickr") for lang in ("en", "de")
    )
    assert (tmp_path / "work" / "raw" / "valid.de").read_text() == "".join(t + "\n" for _, t in PAIRS)
    assert p.state["stages"]["download"]["files_fetched"] == 6


def test_multi30k_download_checksum_mismatch_deletes_the_file(tmp_path, http_server, monkeypatch):
    root, url = http_server
    sums = fake_multi30k(root / "task1" / "raw")
    sums.write_text(
        "".join(
            ("f" * 64 + "  train.de.gz" if line.endswith(" train.de.gz") else line) + "\n"
            for line in sums.read_text().splitlines()
        )
    )
    monkeypatch.setenv("MDN_MULTI30K_URL", url)
    monkeypatch.setenv("MDN_MULTI30K_SHA256", str(sums))
    with pytest.raises(PrepareError) as e:
        multi30k_prep(tmp_path).run_raw()
    msg = str(e.value)
    assert f"checksum mismatch for {url}/train.de.gz" in msg and "pass --data DIR with a local copy" in msg
    down = tmp_path / "work" / "download"
    assert not (down / "train.de.gz").exists() and not leftovers(down)
    assert not (tmp_path / "work" / "prepare.json").exists()


def test_multi30k_download_errors_name_the_url(tmp_path, monkeypatch):
    served = tmp_path / "served"
    sums = fake_multi30k(served)
    (served / "val.de.gz").unlink()  # a file:// base URL, one file missing there
    monkeypatch.setenv("MDN_MULTI30K_URL", served.as_uri())
    monkeypatch.setenv("MDN_MULTI30K_SHA256", str(sums))
    with pytest.raises(PrepareError) as e:
        multi30k_prep(tmp_path).run_raw()
    assert f"download failed: {served.as_uri()}/val.de.gz" in str(e.value) and "--data DIR" in str(e.value)
    assert not leftovers(tmp_path / "work")


def add_tar(path, members):
    with tarfile.open(path, "w:gz" if path.name.endswith(".tgz") else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_wmt14_en_de_is_assembled_from_the_archives(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    add_tar(
        served / "training-parallel-europarl-v7.tgz",
        {
            "training/europarl-v7.de-en.en": b"e1\ne2\n",
            "training/europarl-v7.de-en.de": b"d1\nd2\n",
            "training/europarl-v7.fr-en.en": b"unused\n",
        },
    )
    add_tar(
        served / "training-parallel-commoncrawl.tgz", {"commoncrawl.de-en.en": b"c1", "commoncrawl.de-en.de": b"k1"}
    )  # no final newline
    add_tar(
        served / "training-parallel-nc-v12.tgz",
        {"training/news-commentary-v12.de-en.en": b"n1\nn2\n", "training/news-commentary-v12.de-en.de": b"m1\nm2\n"},
    )
    add_tar(served / "dev.tgz", {"dev/newstest2013.en": b"v1\n", "dev/newstest2013.de": b"w1\n"})
    add_tar(
        served / "test-full.tgz",
        {
            "test-full/newstest2014-deen-src.en.sgm": b'<srcset>\n<doc>\n<seg id="1"> Hello  &amp; bye </seg>\n'
            b'<seg id="2">Two</seg>\n</doc>\n',
            "test-full/newstest2014-deen-ref.de.sgm": '<refset>\n<seg id="1">Hallo</seg>\n<seg id="2">Zwei ü</seg>\n'.encode(),
        },
    )
    monkeypatch.setenv("MDN_WMT14_URL", served.as_uri())
    cfg = load_config(write_config(tmp_path, download="wmt14_en_de"))
    cfg.download = "wmt14_en_de"
    dest = tmp_path / "download"
    record = download_wmt14(cfg, dest, log=lambda m: None)
    assert (dest / "train.en").read_text() == "e1\ne2\nc1\nn1\nn2\n"
    assert (dest / "train.de").read_text() == "d1\nd2\nk1\nm1\nm2\n"
    assert (dest / "valid.de").read_text() == "w1\n"
    assert (dest / "test.en").read_text() == "Hello  &amp; bye\nTwo\n"
    assert (dest / "test.de").read_text() == "Hallo\nZwei ü\n"
    assert record["train_corpora"]["commoncrawl.de-en"] == 1
    # a damaged archive (a truncated download) is reported with what to do
    for f in dest.glob("*.*"):
        if f.is_file():
            f.unlink()
    shutil.rmtree(dest / "orig" / "extracted")
    data = (dest / "orig" / "dev.tgz").read_bytes()
    (dest / "orig" / "dev.tgz").write_bytes(data[: len(data) // 2])
    with pytest.raises(PrepareError, match=r"dev\.tgz: cannot read the archive .*damaged; delete it and re-run"):
        download_wmt14(cfg, dest, log=lambda m: None)


def test_a_failing_fairseq_preprocess_shows_the_log_tail_and_leaves_no_bin(tmp_path, monkeypatch):
    p = prep(tmp_path)
    (tmp_path / "work" / "baseline").mkdir(parents=True)
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho 'ValueError: boom in preprocess' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    with pytest.raises(PrepareError) as e:
        p.stage(
            "baseline/bin", "binarise", p.bin_outputs("baseline"), [], lambda st: stages.binarise(p, st, "baseline")
        )
    log = tmp_path / "work" / "baseline" / "preprocess.log"
    msg = str(e.value)
    assert "fairseq-preprocess failed for baseline (exit code 3)" in msg and str(log) in msg
    assert msg.rstrip().endswith("ValueError: boom in preprocess")
    assert not (tmp_path / "work" / "baseline" / "bin").exists() and not leftovers(tmp_path / "work")
    assert "baseline/bin" not in p.state["stages"]


# ---------------------------------------------------------------- settings fingerprint


def test_work_prepared_with_other_settings_is_refused(tmp_path):
    data = corpus(tmp_path / "data", PAIRS)
    p = prep(tmp_path, data_dir=data, quick=True)
    assert p.run_raw()["splits"]["train"]["read"] == 4  # QUICK_TRAIN_LINES
    with pytest.raises(PrepareError) as e:
        prep(tmp_path, data_dir=data, quick=False)
    msg = str(e.value)
    assert "other settings" in msg and "quick: True -> False" in msg and "use another --work" in msg
    # the same settings resume; other input files are refused too
    prep(tmp_path, data_dir=data, quick=True).run_raw()
    (tmp_path / "work" / "raw" / "train.en").unlink()
    write_lines(data / "train.en", [s + " more" for s, _ in PAIRS])
    with pytest.raises(PrepareError, match="other input files"):
        prep(tmp_path, data_dir=data, quick=True).run_raw()


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_quick_multi30k_and_resume(tmp_path, multi30k):
    work = tmp_path / "work"
    cmd = ["mdn-prepare", "--task", "multi30k_en_de", "--quick", "--work", work, "--data", multi30k, "--workers", "2"]
    # the config's second test set, test_2017_flickr, is not in the folder and cannot be downloaded from here
    offline = {**os.environ, "MDN_MULTI30K_URL": (tmp_path / "no-server").as_uri()}
    first = run_cli(cmd, cwd=REPO, env=offline)
    assert "train: 800 pairs read, 0 empty removed; baseline:" in first.stdout
    warning = "WARNING: test set test_2017_flickr (test1) is missing: test_2017_flickr.en and test_2017_flickr.de"
    assert f"{warning} (plain or .gz) not found in {multi30k}; download failed: " in first.stdout
    assert "   test1 (test_2017_flickr): MISSING (" in first.stdout
    state = json.loads((work / "prepare.json").read_text())
    assert [(t["subset"], t["name"], t["missing"]) for t in state["test_sets"]] == [
        ("test", "test_2016_flickr", False),
        ("test1", "test_2017_flickr", True),
    ]
    assert state["quick"] is True
    assert state["splits"]["train"] == {"lines_read": 800, "empty_removed": 0, "pairs": 800, "references": 1}
    assert state["splits"]["valid"]["lines_read"] == state["splits"]["test"]["lines_read"] == 200
    assert state["bpe"]["baseline"]["merges"] == {"joint": {"requested": 300, "learned": 300}}
    assert state["bpe"]["mdn"]["merges"] == {
        "en": {"requested": 300, "learned": 300},
        "de": {"requested": 200, "learned": 200},
    }
    for name in ("baseline", "mdn"):
        b = state["bpe"][name]
        f = b["filter"]["train"]
        assert f["read"] == 800 and f["kept"] == 800 - f["too_long"] - f["bad_ratio"] - f["too_short"]
        assert b["pairs"] == {"train": f["kept"], "valid": 200, "test": 200}
        for lang in ("en", "de"):
            assert len((work / name / f"train.{lang}").read_text().splitlines()) == f["kept"]
        bin_dir = work / name / "bin"
        for lang in ("en", "de"):
            dict_lines = (bin_dir / f"dict.{lang}.txt").read_text().splitlines()
            assert len(dict_lines) + 4 == b["vocab"][lang] > 50
            for split in ("train", "valid", "test"):
                for ext in ("bin", "idx"):
                    assert (bin_dir / f"{split}.en-de.{lang}.{ext}").stat().st_size > 0
    assert (work / "baseline" / "codes.joint").is_file() and not (work / "baseline" / "codes.en").exists()
    assert (work / "mdn" / "codes.en").is_file() and (work / "mdn" / "codes.de").is_file()
    # mdn's small target vocabulary is its own
    assert state["bpe"]["mdn"]["vocab"]["de"] < state["bpe"]["baseline"]["vocab"]["de"]
    # raw/test.de is the untokenised reference; tok/ is Moses-tokenised
    assert (work / "raw" / "test.de").read_text().splitlines() == read_slice(multi30k / "test_2016_flickr.de.gz", 200)
    assert (work / "tok" / "train.en").read_text().splitlines()[
        0
    ] == "Two young , White males are outside near many bushes ."
    assert not leftovers(work)

    mtimes = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    second = run_cli(cmd, cwd=REPO, env=offline)
    skipped = [line for line in second.stdout.splitlines() if line.endswith("done (skipped)")]
    assert len(skipped) == 8, second.stdout  # raw, tok, and 3 stages per BPE setting
    assert "fairseq-preprocess" not in second.stderr and "it/s" not in second.stderr
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()} == mtimes


@pytest.mark.slow
def test_task_configs_are_package_data_of_the_installed_wheel(tmp_path):
    """``mdn-prepare --task NAME`` from a built and installed (non-editable) wheel, run in a folder that is
    not the checkout: the config comes from the installed package's data."""
    src = tmp_path / "src"  # a copy of the checkout: the build writes nothing into the shared tree
    skip = shutil.ignore_patterns(".git", "work", "results", "docs", "build", "dist", "*.egg-info", "__pycache__")
    shutil.copytree(REPO, src, symlinks=True, ignore=skip)
    wheels, site, run_dir = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    run_cli([*pip, "wheel", "--no-deps", "--no-build-isolation", src, "-w", wheels], cwd=tmp_path)
    (wheel,) = wheels.glob("mdn_fairseq-*.whl")
    run_cli([*pip, "install", "--no-deps", "--target", site, wheel], cwd=tmp_path)
    installed = site / "mdn_fairseq" / "configs"
    assert sorted(p.name for p in installed.iterdir()) == sorted(p.name for p in (REPO / "configs").iterdir())

    data = corpus(tmp_path / "data", PAIRS, splits=("train", "val", "test_2016_flickr"))
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "MDN_MULTI30K_URL": (tmp_path / "no-server").as_uri()}
    cmd = [sys.executable, "-m", "mdn_fairseq.cli.prepare", "--task", "multi30k_en_de", "--quick"]
    out = run_cli([*cmd, "--work", "w", "--data", data, "--workers", "1"], cwd=run_dir, env=env).stdout
    assert f"config {installed / 'multi30k_en_de.sh'}; WORK w" in out, out
    state = json.loads((run_dir / "w" / "prepare.json").read_text())
    assert state["task"] == "multi30k_en_de" and state["splits"]["train"]["pairs"] == len(PAIRS)
    assert (run_dir / "w" / "mdn" / "bin" / "test.en-de.de.bin").stat().st_size > 0
    bad = run_cli([*cmd, "--task", "nope", "--work", "w2"], cwd=run_dir, env=env, ok=False)
    assert bad.returncode == 2 and bad.stderr.startswith(
        "mdn-prepare: unknown task 'nope' (known tasks: multi30k_en_de"
    )
