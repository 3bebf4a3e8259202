"""``mdn-prepare``: raw parallel text -> checked text, Moses tokens, BPE and fairseq binaries for one task.

    mdn-prepare --config configs/TASK.sh --work WORK [--data DIR] [--quick] [--workers N]
    mdn-prepare --task TASK --work WORK ...          (shorthand for --config <repo>/configs/TASK.sh)

The task's settings (languages, file stems, BPE merges, length filter) come from ``configs/TASK.sh``.
The text is read from ``--data DIR``, else from the config's ``DATA`` folder, else downloaded into
``WORK/download`` (Multi30k, WMT14; the config's ``DOWNLOAD``).  Written under WORK:

    raw/{train,valid,test}.{SRC,TGT}   checked text, empty pairs removed (raw/test.TGT: the sacreBLEU
                                       reference; extra references: raw/{split}.TGT.ref1, .ref2, ...)
    tok/{split}.{SRC,TGT}              Moses-tokenised (Chinese: jieba-segmented first)
    baseline/, mdn/                    one BPE setting each:
        codes.joint | codes.SRC, codes.TGT   subword-nmt codes
        {split}.{SRC,TGT}                   BPE text (train: length-filtered in subwords, ratio in words)
        bin/                                fairseq-preprocess output (dict.*.txt, *.bin, *.idx)
        preprocess.log
    prepare.json                       settings fingerprint, counts, vocabulary sizes, merges

Every file is written as ``X.tmp`` and renamed when its stage succeeds; a re-run skips the stages whose
outputs are there (and refuses a WORK prepared with other settings).  ``--quick`` prepares a slice:
the first QUICK_TRAIN_LINES training pairs, the first 200 valid/test pairs, QUICK_*_MERGES merges.
"""

import argparse
import gzip
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

PROG = "mdn-prepare"
REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
SPLITS = ("train", "valid", "test")
BPE_SETTINGS = ("baseline", "mdn")
DOWNLOADS = ("multi30k", "wmt14_en_de", "wmt14_en_fr", "none")
QUICK_EVAL_LINES = 200  # --quick: valid and test are cut to their first 200 pairs
DATA_HINT = "pass --data DIR with a local copy"
CHUNK_LINES = 2000  # lines per job sent to a worker process

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
# The WMT14 corpora of fairseq's examples/translation/prepare-wmt14en2{de,fr}.sh, with newstest2013
# (WMT17's dev.tgz) as the validation set and newstest2014 (test-full.tgz) as the test set.
WMT14 = {
    "wmt14_en_de": {
        "urls": [
            "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
            "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
            "http://data.statmt.org/wmt17/translation-task/training-parallel-nc-v12.tgz",
            "http://data.statmt.org/wmt17/translation-task/dev.tgz",
            "http://statmt.org/wmt14/test-full.tgz",
        ],
        "train": ["training/europarl-v7.de-en", "commoncrawl.de-en", "training/news-commentary-v12.de-en"],
        "valid": "dev/newstest2013",
        "test": ("test-full/newstest2014-deen-src.{lang}.sgm", "test-full/newstest2014-deen-ref.{lang}.sgm"),
    },
    "wmt14_en_fr": {
        "urls": [
            "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
            "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
            "http://statmt.org/wmt13/training-parallel-un.tgz",
            "http://statmt.org/wmt14/training-parallel-nc-v9.tgz",
            "http://statmt.org/wmt10/training-giga-fren.tar",
            "http://data.statmt.org/wmt17/translation-task/dev.tgz",
            "http://statmt.org/wmt14/test-full.tgz",
        ],
        "train": ["training/europarl-v7.fr-en", "commoncrawl.fr-en", "un/undoc.2000.fr-en",
                  "training/news-commentary-v9.fr-en", "giga-fren.release2.fixed"],
        "valid": "dev/newstest2013",
        "test": ("test-full/newstest2014-fren-src.{lang}.sgm", "test-full/newstest2014-fren-ref.{lang}.sgm"),
    },
}

# Characters that Python's text readers (fairseq, sacreBLEU) or str.splitlines() take as line breaks:
# inside a line they would shift every following line, so the raw text gets a space instead.
_LINE_BREAKS = str.maketrans({c: " " for c in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


class PrepareError(Exception):
    """A problem with the settings or the input; the CLI prints ``mdn-prepare: <message>`` and exits."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


# ----------------------------------------------------------------------------------------------
# configuration


_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)")
_PLAIN_VALUE = re.compile(r"[^\s\"'`$\\;&|<>()]*")


def read_config(path):
    """Parse a ``configs/TASK.sh`` file (``KEY=VALUE`` / ``KEY="VALUE"`` lines, ``#`` comment lines).

    Only what bash reads the same way is accepted: no inline comments, no spaces outside quotes, no
    ``$`` expansions.  Returns ``{KEY: VALUE}`` (quotes stripped); a malformed line raises
    :class:`PrepareError` naming ``file:line``.
    """
    values = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PrepareError(f"cannot read config {path}: {e}", exit_code=2)
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _ASSIGNMENT.fullmatch(stripped)
        value = m and _unquote(m.group(2))
        if value is None:
            raise PrepareError(
                f"{path}:{n}: malformed line {line!r}: expected KEY=VALUE or KEY=\"VALUE\" "
                "(no spaces outside quotes, no inline comments, no $ expansions)", exit_code=2)
        values[m.group(1)] = value
    return values


def _unquote(raw):
    """The value of a bash assignment's right-hand side, or None when we would read it differently."""
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        inner = raw[1:-1]
        return None if re.search(r'["`$\\]', inner) else inner
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        inner = raw[1:-1]
        return None if "'" in inner else inner
    return raw if _PLAIN_VALUE.fullmatch(raw) else None


def known_tasks(config_dir=CONFIG_DIR):
    return sorted(p.stem for p in Path(config_dir).glob("*.sh"))


def config_path_for_task(name, config_dir=CONFIG_DIR):
    """``configs/NAME.sh``; an unknown name raises :class:`PrepareError` listing the known tasks."""
    path = Path(config_dir) / f"{name}.sh"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not path.is_file():
        raise PrepareError(f"unknown task '{name}' (known tasks: {', '.join(known_tasks(config_dir))})",
                           exit_code=2)
    return path


@dataclass
class BpeSetting:
    """One BPE setting: a joint model (``src_merges`` merges) or one model per language."""

    joint: bool
    src_merges: int
    tgt_merges: int


@dataclass
class TaskConfig:
    """The settings of ``configs/TASK.sh`` that mdn-prepare uses."""

    path: Path
    task: str
    src: str
    tgt: str
    data: Path = None  # None: no local folder configured
    splits: dict = field(default_factory=dict)  # split -> file stem
    download: str = "none"
    bpe: dict = field(default_factory=dict)  # "baseline" / "mdn" -> BpeSetting
    max_len: int = 250
    max_ratio: float = 1.5
    quick_train_lines: int = 0
    quick_src_merges: int = 0
    quick_tgt_merges: int = 0
    comments: list = field(default_factory=list)  # the config's header comment (explains the data layout)

    @property
    def repo_root(self):
        return self.path.resolve().parent.parent


def load_config(path):
    """Read and check ``configs/TASK.sh``: a :class:`TaskConfig`, or :class:`PrepareError` naming the key."""
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"--config {path}: no such file (known tasks in {CONFIG_DIR}: "
                           f"{', '.join(known_tasks())})", exit_code=2)
    v = read_config(path)

    def get(key):
        if key not in v:
            raise PrepareError(f"{path}: {key} is missing", exit_code=2)
        return v[key]

    def number(key, kind=int, minimum=0):
        try:
            x = kind(get(key))
        except ValueError:
            raise PrepareError(f"{path}: {key}={v[key]!r} is not {'an integer' if kind is int else 'a number'}",
                               exit_code=2)
        if x < minimum:
            raise PrepareError(f"{path}: {key}={v[key]} must be at least {minimum}", exit_code=2)
        return x

    def flag(key):
        if get(key) not in ("0", "1"):
            raise PrepareError(f"{path}: {key}={v[key]!r} must be 0 or 1", exit_code=2)
        return v[key] == "1"

    cfg = TaskConfig(path=path, task=v.get("TASK") or path.stem, src=get("SRC"), tgt=get("TGT"))
    for key in ("SRC", "TGT"):
        if not re.fullmatch(r"[A-Za-z][A-Za-z_-]*", v[key]):
            raise PrepareError(f"{path}: {key}={v[key]!r} is not a language code", exit_code=2)
    if cfg.src == cfg.tgt:
        raise PrepareError(f"{path}: SRC and TGT are both {cfg.src!r}", exit_code=2)
    if v.get("DATA"):
        data = Path(v["DATA"])
        cfg.data = data if data.is_absolute() else (cfg.repo_root / data).resolve()
    for item in get("SPLITS").split():
        split, _, stem = item.partition("=")
        if split not in SPLITS or not stem or "/" in stem:
            raise PrepareError(f"{path}: SPLITS item {item!r}: expected train=STEM valid=STEM test=STEM", exit_code=2)
        cfg.splits[split] = stem
    if set(cfg.splits) != set(SPLITS):
        raise PrepareError(f"{path}: SPLITS={v['SPLITS']!r} must name train, valid and test", exit_code=2)
    cfg.download = get("DOWNLOAD")
    if cfg.download not in DOWNLOADS:
        raise PrepareError(f"{path}: DOWNLOAD={cfg.download!r}: expected one of {', '.join(DOWNLOADS)}", exit_code=2)
    for name in BPE_SETTINGS:
        key = name.upper()
        cfg.bpe[name] = BpeSetting(flag(f"{key}_JOINT"), number(f"{key}_SRC_MERGES", minimum=1),
                                   number(f"{key}_TGT_MERGES", minimum=1))
    cfg.max_len = number("MAX_LEN", minimum=1)
    cfg.max_ratio = number("MAX_RATIO", float, minimum=1)
    cfg.quick_train_lines = number("QUICK_TRAIN_LINES", minimum=1)
    cfg.quick_src_merges = number("QUICK_SRC_MERGES", minimum=1)
    cfg.quick_tgt_merges = number("QUICK_TGT_MERGES", minimum=1)
    for line in path.read_text(encoding="utf-8").splitlines():  # the header comment: what the data looks like
        if not line.lstrip().startswith("#"):
            break
        cfg.comments.append(line)
    return cfg


# ----------------------------------------------------------------------------------------------
# reading and checking text (pure functions)


def _open_binary(path):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def decode_line(raw, path, lineno):
    """One line of ``path`` (bytes, newline included or not) as text; bad UTF-8 raises :class:`PrepareError`."""
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PrepareError(
            f"{path}: line {lineno}: invalid UTF-8 at byte {e.start} of the line ({e.reason}): re-encode the "
            f"file as UTF-8, e.g. iconv -f LATIN1 -t UTF-8 FILE > FILE.utf8 (zcat/gzip around it for .gz)")
    return text[1:] if lineno == 1 and text.startswith("\ufeff") else text


def _lines(f, path):
    """The raw lines of an open binary file; a damaged file raises :class:`PrepareError`."""
    try:
        yield from f
    except (OSError, EOFError, zlib.error) as e:
        raise PrepareError(f"{path}: cannot read ({e}): the file is damaged or truncated")


def read_parallel(paths, limit=None):
    """Yield ``(lineno, (line_0, line_1, ...))`` from line-aligned files (plain or ``.gz``), 1-based.

    Stops after ``limit`` lines when given.  Invalid UTF-8 and files of different lengths raise
    :class:`PrepareError` (naming the file and line, or every file and its line count).
    """
    paths = [str(p) for p in paths]
    with ExitStack() as stack:
        its = []
        for p in paths:
            try:
                its.append(_lines(stack.enter_context(_open_binary(p)), p))
            except OSError as e:
                raise PrepareError(f"cannot open {p}: {e}")
        n = 0
        while limit is None or n < limit:
            row = [next(it, None) for it in its]
            if all(r is None for r in row):
                return
            if any(r is None for r in row):
                counts = [n + (r is not None) + sum(1 for _ in it) for r, it in zip(row, its)]
                listing = ", ".join(f"{p} has {c} lines" for p, c in zip(paths, counts))
                raise PrepareError(f"line counts differ: {listing} (the files of a split must be line-aligned)")
            n += 1
            yield n, tuple(decode_line(r, p, n) for r, p in zip(row, paths))


def is_blank(text):
    """True for an empty or whitespace-only line."""
    return not text.strip()


def drop_empty(rows, columns=None):
    """Remove the rows (tuples of lines) with an empty or whitespace-only line in ``columns`` (default: all).

    Returns ``(kept_rows, removed_count)``.
    """
    kept, removed = [], 0
    for row in rows:
        cols = row if columns is None else [row[i] for i in columns]
        if any(is_blank(c) for c in cols):
            removed += 1
        else:
            kept.append(row)
    return kept, removed


def clean_line(text):
    """A raw line as written to ``raw/``: stray line-break characters as spaces, outer whitespace stripped."""
    return text.translate(_LINE_BREAKS).strip()


def length_verdict(src, tgt, max_len, max_ratio, words=None):
    """Why a (subword) pair is removed from training, as Moses' clean-corpus-n does, or None to keep it.

    ``"too_short"`` (a side without tokens), ``"too_long"`` (a side over ``max_len`` tokens) or
    ``"bad_ratio"`` (longer/shorter side above ``max_ratio``).  Tokens are split on spaces.  The ratio
    is taken on ``words`` (the pair before BPE: ``(src, tgt)`` Moses tokens) when given, so that BPE
    settings with different merges (a small target vocabulary makes target sides longer in subwords)
    keep the same training pairs; otherwise on the pair itself.
    """
    ns, nt = len(src.split()), len(tgt.split())
    if ns == 0 or nt == 0:
        return "too_short"
    if ns > max_len or nt > max_len:
        return "too_long"
    if words is not None:
        ns, nt = max(1, len(words[0].split())), max(1, len(words[1].split()))
    if max(ns, nt) / min(ns, nt) > max_ratio:
        return "bad_ratio"
    return None


def length_filter(pairs, max_len, max_ratio, word_pairs=None):
    """Filter ``(src, tgt)`` subword pairs with :func:`length_verdict` (ratio on ``word_pairs``, the same
    pairs before BPE, when given).

    Returns ``(kept_pairs, stats)``, stats counting ``too_short``, ``too_long`` and ``bad_ratio``.
    """
    kept, stats = [], {"too_short": 0, "too_long": 0, "bad_ratio": 0}
    for i, (src, tgt) in enumerate(pairs):
        why = length_verdict(src, tgt, max_len, max_ratio, None if word_pairs is None else word_pairs[i])
        if why is None:
            kept.append((src, tgt))
        else:
            stats[why] += 1
    return kept, stats


def segment_chinese(line):
    """Chinese word segmentation with jieba, whitespace collapsed to single spaces."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return " ".join(" ".join(jieba.cut(line)).split())


_TOKENIZERS = {}
_BPE_MODELS = {}


def tokenize_line(line, lang):
    """Moses tokenisation (sacremoses, no escaping, no aggressive dash splitting); zh is jieba-segmented first."""
    if lang not in _TOKENIZERS:
        from sacremoses import MosesTokenizer

        _TOKENIZERS[lang] = MosesTokenizer(lang=lang)
    if lang == "zh":
        line = segment_chinese(line)
    return _TOKENIZERS[lang].tokenize(line, aggressive_dash_splits=False, escape=False, return_str=True)


def _bpe_model(codes):
    """The subword-nmt BPE model of the codes file ``codes`` (cached per file version)."""
    st = os.stat(codes)
    key = (os.path.abspath(codes), st.st_mtime_ns, st.st_size)
    if key not in _BPE_MODELS:
        from subword_nmt.apply_bpe import BPE

        with open(codes, encoding="utf-8") as f:
            _BPE_MODELS[key] = BPE(f, separator="@@")
    return _BPE_MODELS[key]


def _work(job):
    """Process one chunk of ``(src, tgt)`` pairs in a worker: ``("tok", (src_lang, tgt_lang), pairs)``
    or ``("bpe", (src_codes, tgt_codes), pairs)``."""
    kind, (a, b), pairs = job
    if kind == "tok":
        return [(tokenize_line(s, a), tokenize_line(t, b)) for s, t in pairs]
    bs, bt = _bpe_model(a), _bpe_model(b)
    return [(bs.process_line(s), bt.process_line(t)) for s, t in pairs]


class ChunkMapper:
    """Runs :func:`_work` over a stream of pairs in chunks, in order, on ``workers`` processes.

    The pool is started on first need (small inputs stay in this process) and is fed a bounded window
    of chunks at a time, so memory does not grow with the corpus.
    """

    def __init__(self, workers, chunk_lines=CHUNK_LINES):
        self.workers, self.chunk_lines, self.pool = max(1, workers), chunk_lines, None

    def map(self, kind, args, pairs):
        window = []
        it = iter(pairs)
        while True:
            chunk = list(islice(it, self.chunk_lines))
            if chunk:
                window.append((kind, args, chunk))
            if window and (not chunk or len(window) >= 4 * self.workers):
                yield from self._run(window)
                window = []
            if not chunk:
                return

    def _run(self, jobs):
        if self.workers > 1 and len(jobs) > 1:
            if self.pool is None:
                methods = multiprocessing.get_all_start_methods()
                ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
                self.pool = ctx.Pool(self.workers)
            results = self.pool.map(_work, jobs, chunksize=1)
        else:
            results = [_work(job) for job in jobs]
        for chunk in results:
            yield from chunk

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_sha256sums(path):
    """``{file name: sha256}`` from a ``sha256sum``-format file; a malformed line raises :class:`PrepareError`."""
    sums = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line.rstrip())
        if not m:
            raise PrepareError(f"{path}:{n}: malformed checksum line {line!r} (expected: SHA256  FILE)")
        sums[os.path.basename(m.group(2))] = m.group(1).lower()
    return sums


def verify_sha256(path, expected, listed_in):
    actual = sha256_file(path)
    if actual != expected:
        raise PrepareError(f"{path}: SHA256 mismatch (expected {expected} as listed in {listed_in}, got {actual}): "
                           "the file is damaged or not the published one; fetch it again")


# ----------------------------------------------------------------------------------------------
# finding and downloading the data


def find_input(folder, name):
    """``folder/name`` or ``folder/name.gz`` (the plain file first), or None."""
    for cand in (Path(folder) / name, Path(folder) / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


def find_split_files(folder, split, stem, src, tgt):
    """``(source_file, [reference_files])`` of one split in ``folder``.

    The target is ``{stem}.{tgt}``, or, when that is absent, the multiple references ``{stem}.{tgt}0``,
    ``{stem}.{tgt}1``, ... (NIST style).  A missing file raises :class:`PrepareError`.
    """
    def missing(lang, name):
        return PrepareError(
            f"missing input file for split {split} ({lang}): {Path(folder) / name} (or {name}.gz) not found; "
            f"{DATA_HINT}: a folder with {stem}.{src} and {stem}.{tgt} (plain or .gz)")

    source = find_input(folder, f"{stem}.{src}")
    if source is None:
        raise missing(src, f"{stem}.{src}")
    single = find_input(folder, f"{stem}.{tgt}")
    if single is not None:
        return source, [single]
    refs = []
    while (ref := find_input(folder, f"{stem}.{tgt}{len(refs)}")) is not None:
        refs.append(ref)
    if not refs:
        raise missing(tgt, f"{stem}.{tgt}")
    return source, refs


def fetch(url, dest, sha256=None, log=print):
    """Download ``url`` to ``dest`` (through ``dest.part``), checking ``sha256`` when given."""
    part = Path(f"{dest}.part")
    part.parent.mkdir(parents=True, exist_ok=True)
    log(f"   downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as out:
            shutil.copyfileobj(r, out, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise PrepareError(f"download failed: {url}: {reason}; {DATA_HINT}")
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256:
            part.unlink()
            raise PrepareError(f"checksum mismatch for {url} (expected {sha256}, got {actual}); the file was "
                               f"deleted; {DATA_HINT}")
    os.replace(part, dest)


def download_multi30k(cfg, dest, log=print):
    """Fetch the task's Multi30k files into ``dest``, each checked against ``configs/multi30k.sha256``.

    ``MDN_MULTI30K_URL`` overrides the base URL and ``MDN_MULTI30K_SHA256`` the checksum file (tests).
    """
    base = os.environ.get("MDN_MULTI30K_URL", MULTI30K_URL).rstrip("/")
    sha_file = Path(os.environ.get("MDN_MULTI30K_SHA256", CONFIG_DIR / "multi30k.sha256"))
    sums = read_sha256sums(sha_file)
    fetched = 0
    for stem in cfg.splits.values():
        for lang in (cfg.src, cfg.tgt):
            name = f"{stem}.{lang}.gz"
            if name not in sums:
                raise PrepareError(f"{sha_file} has no checksum for {name}")
            target = Path(dest) / name
            if target.is_file() and sha256_file(target) == sums[name]:
                continue
            fetch(f"{base}/{name}", target, sums[name], log)
            fetched += 1
    return {"source": base, "files_fetched": fetched}


def _sgm_segments(path):
    """The ``<seg ...>text</seg>`` contents of an SGML test file, one per line (text not unescaped)."""
    seg = re.compile(r"<seg[^>]*>(.*?)</seg>", re.IGNORECASE)
    out = []
    for _, line in read_parallel([path]):
        m = seg.search(line[0])
        if m:
            out.append(m.group(1).strip())
    return out


def _copy_lines(src_path, out):
    """Append ``src_path`` to the binary file ``out`` (adding a final newline); returns its line count."""
    n, last = 0, b"\n"
    with _open_binary(src_path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
            last = block[-1:]
            out.write(block)
    if last != b"\n":
        out.write(b"\n")
        n += 1
    return n


def download_wmt14(cfg, dest, log=print):
    """Fetch and assemble WMT14 (as fairseq's prepare-wmt14en2{de,fr}.sh) into ``dest/{train,valid,test}.*``.

    No official checksums exist for these archives: they are checked by reading them through
    (tarfile/gzip), which catches truncated or damaged downloads.  ``MDN_WMT14_URL`` replaces the
    servers by one base URL holding every archive (tests, mirrors).
    """
    spec = WMT14[cfg.download]
    dest = Path(dest)
    orig = dest / "orig"
    base = os.environ.get("MDN_WMT14_URL")
    src, tgt = cfg.src, cfg.tgt
    members = {("train", lang): [f"{c}.{lang}" for c in spec["train"]] for lang in (src, tgt)}
    members.update({("valid", lang): [f"{spec['valid']}.{lang}"] for lang in (src, tgt)})
    members[("test", src)] = [spec["test"][0].format(lang=src)]
    members[("test", tgt)] = [spec["test"][1].format(lang=tgt)]
    wanted = {m for names in members.values() for m in names}
    found = {}
    for url in spec["urls"]:
        name = url.rsplit("/", 1)[1]
        archive = orig / name
        if not archive.is_file():
            fetch(f"{base.rstrip('/')}/{name}" if base else url, archive, log=log)
        log(f"   reading {archive}")
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:  # reading every member checks the whole archive
                    mname = member.name[2:] if member.name.startswith("./") else member.name
                    key = mname[:-3] if mname.endswith(".gz") else mname
                    if key not in wanted or not member.isfile():
                        continue
                    target = orig / "extracted" / key
                    found[key] = target
                    if target.is_file():
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = Path(f"{target}.tmp")
                    with tar.extractfile(member) as f, open(tmp, "wb") as out:
                        shutil.copyfileobj(gzip.GzipFile(fileobj=f) if mname.endswith(".gz") else f, out, 1 << 20)
                    os.replace(tmp, target)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise PrepareError(f"{archive}: cannot read the archive ({e}): it is truncated or damaged; delete it "
                               f"and re-run (it comes from {url}), or {DATA_HINT}")
    missing = sorted(wanted - set(found))
    if missing:
        raise PrepareError(f"the archives in {orig} do not hold {', '.join(missing)}; {DATA_HINT}")

    # train: the corpora concatenated (each checked for equal line counts); valid: newstest2013;
    # test: the <seg> lines of newstest2014's SGML files
    staged, counts = StagedFiles(), {}
    try:
        outs = {(split, lang): staged.open(dest / f"{cfg.splits[split]}.{lang}", binary=True)
                for split in SPLITS for lang in (src, tgt)}
        for i, corpus in enumerate(spec["train"]):
            n = {lang: _copy_lines(found[members[("train", lang)][i]], outs[("train", lang)]) for lang in (src, tgt)}
            if n[src] != n[tgt]:
                raise PrepareError(f"line counts differ: {found[members[('train', src)][i]]} has {n[src]} lines, "
                                   f"{found[members[('train', tgt)][i]]} has {n[tgt]} lines")
            counts[corpus] = n[src]
        for lang in (src, tgt):
            _copy_lines(found[members[("valid", lang)][0]], outs[("valid", lang)])
            outs[("test", lang)].write("".join(s + "\n" for s in _sgm_segments(found[members[("test", lang)][0]]))
                                       .encode("utf-8"))
        staged.commit()
    except BaseException:
        staged.abort()
        raise
    return {"source": base or "statmt.org", "train_corpora": counts}


# ----------------------------------------------------------------------------------------------
# the pipeline


class StagedFiles:
    """The outputs of one stage: written as ``X.tmp`` and renamed together on :meth:`commit`."""

    def __init__(self):
        self.pending = []  # (tmp, final)
        self.handles = []

    def open(self, path, binary=False):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{path}.tmp")
        f = open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline="\n")
        self.handles.append(f)
        self.pending.append((tmp, path))
        return f

    def directory(self, path):
        """A fresh ``path.tmp`` folder that becomes ``path`` on commit."""
        tmp = Path(f"{path}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.pending.append((tmp, Path(path)))
        return tmp

    def commit(self):
        for f in self.handles:
            f.close()
        for tmp, final in self.pending:
            if tmp.is_dir():
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        self.pending, self.handles = [], []

    def abort(self):
        for f in self.handles:
            f.close()
        for tmp, _ in self.pending:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()
        self.pending, self.handles = [], []


def _write_json(path, obj):
    """Write ``obj`` to ``path`` atomically; an unchanged file is left alone (its mtime too)."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    if os.path.isfile(path) and Path(path).read_text(encoding="utf-8") == text:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _count_lines(path):
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _nonempty(path):
    return os.path.isfile(path) and os.path.getsize(path) > 0


class Preparation:
    """One ``mdn-prepare`` run: settings, the WORK state (``prepare.json``) and the stages."""

    def __init__(self, cfg, work, data=None, quick=False, workers=1, out=print):
        self.cfg, self.work, self.quick, self.workers, self._out = cfg, Path(work), quick, max(1, workers), out
        self.data_arg = Path(data) if data else None
        self.start = time.time()
        self.ran = set()
        self.state_path = self.work / "prepare.json"
        self.settings = self.make_settings()
        self.fingerprint = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]
        self.state = self.load_state()

    # -- settings and state

    def merges(self, name):
        """``{"joint": n}`` or ``{SRC: n, TGT: n}``: the merges BPE setting ``name`` learns."""
        b = self.cfg.bpe[name]
        s, t = (self.cfg.quick_src_merges, self.cfg.quick_tgt_merges) if self.quick else (b.src_merges, b.tgt_merges)
        return {"joint": s} if b.joint else {self.cfg.src: s, self.cfg.tgt: t}

    def make_settings(self):
        c = self.cfg
        tokenizer = "sacremoses escape=False aggressive_dash_splits=False"
        return {
            "task": c.task, "src": c.src, "tgt": c.tgt, "splits": c.splits, "quick": self.quick,
            "train_lines": c.quick_train_lines if self.quick else None,
            "eval_lines": QUICK_EVAL_LINES if self.quick else None,
            "tokenizer": {lang: tokenizer + (" after jieba" if lang == "zh" else "") for lang in (c.src, c.tgt)},
            "bpe": {name: {"joint": c.bpe[name].joint, "merges": self.merges(name)} for name in BPE_SETTINGS},
            "max_len": c.max_len, "max_ratio": c.max_ratio,
        }

    def load_state(self):
        """``prepare.json`` if WORK has one with our fingerprint; other settings raise :class:`PrepareError`."""
        if self.work.exists() and not self.work.is_dir():
            raise PrepareError(f"--work {self.work} is a file, not a folder", exit_code=2)
        if not self.state_path.is_file():
            return {"fingerprint": self.fingerprint, "settings": self.settings, "stages": {}}
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise PrepareError(f"{self.state_path} is unreadable ({e}): delete {self.work} or use another --work")
        if state.get("fingerprint") != self.fingerprint:
            old = state.get("settings", {})
            diffs = [f"{k}: {old.get(k)!r} -> {self.settings.get(k)!r}"
                     for k in sorted(set(old) | set(self.settings)) if old.get(k) != self.settings.get(k)]
            raise PrepareError(
                f"{self.work} was prepared with other settings ({'; '.join(diffs) or 'fingerprint differs'}): "
                f"use another --work, or delete {self.work} to prepare it again")
        state.setdefault("stages", {})
        return state

    def save_state(self):
        self.work.mkdir(parents=True, exist_ok=True)
        _write_json(self.state_path, self.state)

    def log(self, msg):
        self._out(f"== [prepare {time.time() - self.start:.0f}s] {msg}")

    def path(self, *parts):
        return self.work.joinpath(*parts)

    def read_pairs(self, folder, split):
        """The (src, tgt) lines of ``WORK/folder/split.*``."""
        langs = (self.cfg.src, self.cfg.tgt)
        return (row for _, row in read_parallel([self.path(folder, f"{split}.{lang}") for lang in langs]))

    # -- the stage runner

    def done(self, key, outputs):
        return key in self.state["stages"] and all(_nonempty(p) for p in outputs)

    def stage(self, key, title, outputs, deps, fn):
        """Run ``fn(staged)`` unless ``key`` is recorded done, its outputs are there and no dependency ran."""
        if self.done(key, outputs) and not (set(deps) & self.ran):
            self.log(f"{title}: done (skipped)")
            return self.state["stages"][key]
        self.log(title)
        t0 = time.time()
        staged = StagedFiles()
        try:
            record = fn(staged)
            staged.commit()
        except BaseException:
            staged.abort()
            raise
        record["seconds"] = round(time.time() - t0, 1)
        self.state["stages"][key] = record
        self.ran.add(key)
        self.save_state()
        return record

    # -- stages

    def split_limit(self, split):
        if not self.quick:
            return None
        return self.cfg.quick_train_lines if split == "train" else QUICK_EVAL_LINES

    def raw_outputs(self):
        c, rec = self.cfg, self.state["stages"].get("raw", {})
        outs = []
        for split in SPLITS:
            outs += [self.path("raw", f"{split}.{c.src}"), self.path("raw", f"{split}.{c.tgt}")]
            refs = rec.get("splits", {}).get(split, {}).get("references", 1)
            outs += [self.path("raw", f"{split}.{c.tgt}.ref{i}") for i in range(1, refs)]
        return outs

    def resolve_data(self):
        """The folder to read: --data, the config's DATA, or a download into WORK/download."""
        c = self.cfg
        layout = "\n".join(c.comments)
        if self.data_arg is not None:
            if not self.data_arg.is_dir():
                raise PrepareError(f"--data {self.data_arg}: no such folder; the config {c.path} says:\n{layout}")
            return self.data_arg
        if c.data is not None and c.data.is_dir():
            return c.data
        why = f"the data folder {c.data} is missing" if c.data is not None else f"DATA is empty in {c.path}"
        if c.download == "none":
            splits = " ".join(f"{k}={v}" for k, v in c.splits.items())
            raise PrepareError(f"{why} and {c.task} cannot be downloaded: pass --data DIR. Expected layout "
                               f"(SPLITS={splits}; from {c.path}):\n{layout}")
        dest = self.path("download")
        fetcher = download_multi30k if c.download == "multi30k" else download_wmt14
        suffix = ".gz" if c.download == "multi30k" else ""
        files = [dest / f"{stem}.{lang}{suffix}" for stem in c.splits.values() for lang in (c.src, c.tgt)]
        self.stage("download", f"download ({c.download}; {why}) -> {dest}", files, [],
                   lambda staged: fetcher(c, dest, log=self._out))
        return dest

    def stage_raw(self, staged, folder, sources):
        c = self.cfg
        sums_file = folder / "SHA256SUMS"
        sums = read_sha256sums(sums_file) if sums_file.is_file() else {}
        record = {"data": str(folder), "splits": {}}
        for split in SPLITS:
            src_file, ref_files = sources[split]
            for p in [src_file, *ref_files]:
                if p.name in sums:
                    verify_sha256(p, sums[p.name], sums_file)
            names = [f"{split}.{c.src}", f"{split}.{c.tgt}"]
            names += [f"{split}.{c.tgt}.ref{i}" for i in range(1, len(ref_files))]
            outs = [staged.open(self.path("raw", n)) for n in names]
            read = removed = 0
            rows = read_parallel([src_file, *ref_files], self.split_limit(split))
            while chunk := [row for _, row in islice(rows, 10000)]:
                read += len(chunk)
                kept, n = drop_empty(chunk, columns=(0, 1))
                removed += n
                for row in kept:
                    for f, text in zip(outs, row):
                        f.write(clean_line(text) + "\n")
            files = " and ".join(str(p) for p in [src_file, *ref_files])
            if read == 0:
                raise PrepareError(f"split {split}: {files} are empty")
            if removed == read:
                raise PrepareError(f"split {split}: all {read} pairs of {files} have an empty or blank line")
            record["splits"][split] = {"read": read, "empty_removed": removed, "pairs": read - removed,
                                       "references": len(ref_files)}
        return record

    def stage_tok(self, staged):
        c = self.cfg
        if "zh" in (c.src, c.tgt):
            try:
                import jieba
            except ImportError:
                raise PrepareError("Chinese needs jieba: pip install jieba")
            jieba.setLogLevel(logging.WARNING)
            jieba.initialize()  # once here, not in every worker
        mapper = ChunkMapper(self.workers)
        lines = {}
        try:
            for split in SPLITS:
                outs = [staged.open(self.path("tok", f"{split}.{lang}")) for lang in (c.src, c.tgt)]
                pairs = self.read_pairs("raw", split)
                n = 0
                for s, t in mapper.map("tok", (c.src, c.tgt), pairs):
                    outs[0].write(s + "\n")
                    outs[1].write(t + "\n")
                    n += 1
                    if n % 1000000 == 0:
                        self.log(f"tokenise: {split} {n:,} lines")
                lines[split] = n
        finally:
            mapper.close()
        return {"lines": lines}

    def codes_files(self, name):
        c = self.cfg
        if c.bpe[name].joint:
            return {c.src: self.path(name, "codes.joint"), c.tgt: self.path(name, "codes.joint")}
        return {lang: self.path(name, f"codes.{lang}") for lang in (c.src, c.tgt)}

    def stage_codes(self, staged, name):
        from collections import Counter

        from subword_nmt.learn_bpe import learn_bpe

        c = self.cfg
        merges = self.merges(name)
        groups = {"joint": [c.src, c.tgt]} if "joint" in merges else {c.src: [c.src], c.tgt: [c.tgt]}
        record = {"joint": "joint" in merges, "merges": {}}
        for key, langs in groups.items():
            vocab = Counter()
            for lang in langs:
                with open(self.path("tok", f"train.{lang}"), encoding="utf-8") as f:
                    for line in f:
                        vocab.update(w for w in line.rstrip("\n").split(" ") if w)
            out_path = self.path(name, f"codes.{key}")
            out = staged.open(out_path)
            learn_bpe([f"{w} {n}\n" for w, n in vocab.items()], out, merges[key], is_dict=True)
            out.flush()
            learned = _count_lines(f"{out_path}.tmp") - 1  # minus the "#version" header
            record["merges"][key] = {"requested": merges[key], "learned": learned}
        return record

    def stage_apply(self, staged, name):
        c = self.cfg
        codes = self.codes_files(name)
        mapper = ChunkMapper(self.workers)
        record = {}
        try:
            for split in SPLITS:
                outs = [staged.open(self.path(name, f"{split}.{lang}")) for lang in (c.src, c.tgt)]
                pairs = self.read_pairs("tok", split)
                bpe_pairs = mapper.map("bpe", (str(codes[c.src]), str(codes[c.tgt])), pairs)
                word_pairs = self.read_pairs("tok", split)  # the same pairs before BPE, for the ratio
                read, stats = 0, {"too_short": 0, "too_long": 0, "bad_ratio": 0}
                while chunk := list(islice(bpe_pairs, 10000)):
                    read += len(chunk)
                    words = list(islice(word_pairs, len(chunk)))
                    if split == "train":
                        chunk, s = length_filter(chunk, c.max_len, c.max_ratio, words)
                        stats = {k: stats[k] + s[k] for k in stats}
                    for s_line, t_line in chunk:
                        outs[0].write(s_line + "\n")
                        outs[1].write(t_line + "\n")
                if split == "train":
                    kept = read - sum(stats.values())
                    if kept == 0:
                        raise PrepareError(f"{name}: the length filter (MAX_LEN={c.max_len}, MAX_RATIO={c.max_ratio}) "
                                           f"removed all {read} training pairs")
                    record[split] = {"read": read, **stats, "kept": kept}
                else:
                    record[split] = {"read": read, "kept": read}
        finally:
            mapper.close()
        return record

    def bin_outputs(self, name):
        c, d = self.cfg, self.path(name, "bin")
        outs = [d / f"dict.{c.src}.txt", d / f"dict.{c.tgt}.txt"]
        for split in SPLITS:
            for lang in (c.src, c.tgt):
                outs += [d / f"{split}.{c.src}-{c.tgt}.{lang}.{ext}" for ext in ("bin", "idx")]
        return outs

    def stage_bin(self, staged, name):
        c = self.cfg
        prefix = self.path(name)
        tmp = staged.directory(self.path(name, "bin"))
        log_path = self.path(name, "preprocess.log")
        cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", c.src, "--target-lang", c.tgt,
               "--trainpref", str(prefix / "train"), "--validpref", str(prefix / "valid"),
               "--testpref", str(prefix / "test"), "--destdir", str(tmp), "--workers", str(self.workers)]
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-20:])
            raise PrepareError(f"fairseq-preprocess failed for {name} (exit code {rc}); full log: {log_path}; "
                               f"its end:\n{tail}")
        vocab = {lang: _count_lines(tmp / f"dict.{lang}.txt") + 4 for lang in (c.src, c.tgt)}  # + bos/pad/eos/unk
        return {"vocab": vocab}

    # -- everything

    def run(self):
        """Every stage, then the summary."""
        c = self.cfg
        self.log(f"{c.task}: {c.src} -> {c.tgt}{' (--quick)' if self.quick else ''}; WORK {self.work}")
        self.run_raw()
        tok_outputs = [self.path("tok", f"{s}.{lang}") for s in SPLITS for lang in (c.src, c.tgt)]
        self.stage("tok", f"tokenise (sacremoses{', jieba' if 'zh' in (c.src, c.tgt) else ''}; "
                   f"{self.workers} workers) -> tok/", tok_outputs, ["raw"], self.stage_tok)
        for name in BPE_SETTINGS:
            merges = ", ".join(f"{k} {v}" for k, v in self.merges(name).items())
            self.stage(f"{name}/codes", f"{name}: learn BPE ({merges} merges) -> {name}/codes.*",
                       list(set(self.codes_files(name).values())), ["tok"],
                       lambda staged, n=name: self.stage_codes(staged, n))
            self.stage(f"{name}/apply", f"{name}: apply BPE, filter train (MAX_LEN={c.max_len}, "
                       f"MAX_RATIO={c.max_ratio}) -> {name}/",
                       [self.path(name, f"{s}.{lang}") for s in SPLITS for lang in (c.src, c.tgt)],
                       ["tok", f"{name}/codes"], lambda staged, n=name: self.stage_apply(staged, n))
            self.stage(f"{name}/bin", f"{name}: binarise (fairseq-preprocess) -> {name}/bin",
                       self.bin_outputs(name), [f"{name}/apply"], lambda staged, n=name: self.stage_bin(staged, n))
        self.summarise()

    def run_raw(self):
        """The first stages: find (or download) the input, check it, write ``raw/``.

        Skipped, input and download included, when ``raw/`` is done: the input may be gone by then.
        """
        c = self.cfg
        if self.done("raw", self.raw_outputs()):
            self.log("raw text: done (skipped)")
        else:
            folder = self.resolve_data()
            sources = {split: find_split_files(folder, split, stem, c.src, c.tgt) for split, stem in c.splits.items()}
            inputs = {p.name: os.path.getsize(p) for srcf, refs in sources.values() for p in [srcf, *refs]}
            if "inputs" in self.state and self.state["inputs"] != inputs:
                raise PrepareError(f"{self.work} was prepared from other input files ({self.state['inputs']} now "
                                   f"{inputs}): use another --work, or delete {self.work} to prepare it again")
            self.state["inputs"] = inputs
            self.stage("raw", f"raw text: check and remove empty pairs ({folder}) -> raw/", self.raw_outputs(), [],
                       lambda staged: self.stage_raw(staged, folder, sources))
        return self.state["stages"]["raw"]

    def summarise(self):
        """Write the counts into prepare.json and print them."""
        c, st = self.cfg, self.state["stages"]
        splits = {}
        for split in SPLITS:
            r = st["raw"]["splits"][split]
            splits[split] = {"lines_read": r["read"], "empty_removed": r["empty_removed"], "pairs": r["pairs"],
                             "references": r["references"]}
        bpe = {}
        for name in BPE_SETTINGS:
            bpe[name] = {"joint": st[f"{name}/codes"]["joint"], "merges": st[f"{name}/codes"]["merges"],
                         "filter": {"train": st[f"{name}/apply"]["train"]},
                         "pairs": {s: st[f"{name}/apply"][s]["kept"] for s in SPLITS},
                         "vocab": st[f"{name}/bin"]["vocab"], "bin": str(self.path(name, "bin"))}
        self.state.update(task=c.task, src=c.src, tgt=c.tgt, quick=self.quick, splits=splits, bpe=bpe)
        self.save_state()
        self.log(f"summary ({self.state_path})")
        for split in SPLITS:
            s = splits[split]
            line = f"   {split}: {s['lines_read']} pairs read, {s['empty_removed']} empty removed"
            if s["references"] > 1:
                line += f", {s['references']} references"
            if split == "train":
                for name in BPE_SETTINGS:
                    f = bpe[name]["filter"]["train"]
                    line += f"; {name}: {f['too_long']} too long, {f['bad_ratio']} bad ratio"
                    line += f", {f['too_short']} empty" if f["too_short"] else ""
                    line += " removed"
            self._out(line)
        for name in BPE_SETTINGS:
            b = bpe[name]
            merges = ", ".join(
                f"{k} {m['learned']}" + (f" (of {m['requested']})" if m["learned"] < m["requested"] else "")
                for k, m in b["merges"].items())
            vocab = ", ".join(f"{lang} {n}" for lang, n in b["vocab"].items())
            self._out(f"   {name}: {'joint' if b['joint'] else 'separate'} BPE, merges {merges}; "
                      f"{b['pairs']['train']} training pairs; vocabulary {vocab}")


def parse(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="the task's settings, configs/TASK.sh")
    which.add_argument("--task", help=f"shorthand for --config {CONFIG_DIR}/TASK.sh ({', '.join(known_tasks())})")
    p.add_argument("--work", required=True, help="output folder")
    p.add_argument("--data", help="folder with the raw text (default: the config's DATA, else a download)")
    p.add_argument("--quick", action="store_true", help="a small slice with few merges (a smoke test)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes for tokenisation, BPE and fairseq-preprocess (default: the number of cores)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be at least 1, got {args.workers}")
    return args


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(config_path_for_task(args.task) if args.task else args.config)
        Preparation(cfg, args.work, data=args.data, quick=args.quick, workers=args.workers,
                    out=lambda msg: print(msg, flush=True)).run()
    except PrepareError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
