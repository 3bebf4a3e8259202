"""What each stage of :class:`~mdn_fairseq.prepare.pipeline.Preparation` does.

Each stage is ``fn(prep, staged, ...) -> record``: it reads WORK through ``prep`` (a Preparation), writes
its outputs through ``staged`` (a :class:`~mdn_fairseq.prepare.staged.StagedFiles`) and returns the counts
recorded in ``prepare.json``.  Bad input raises :class:`~mdn_fairseq.prepare.config.PrepareError`.
"""

import io
import os
import subprocess
import sys
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Dict, List, Sequence

from .config import BPE_SETTINGS, SPLITS, PrepareError
from .download import read_sha256sums, verify_sha256
from .text import LENGTH_VERDICTS, clean_line, count_lines, drop_empty, length_filter, read_parallel
from .tokenise import JIEBA_LANGS, ChunkMapper, load_jieba

BLOCK = 10000  # pairs read and written at a time


def verify_listed(files: Sequence[Path]) -> None:
    """Check each file against the ``SHA256SUMS`` of its folder, when there is one that lists it; a
    mismatch raises :class:`PrepareError` naming the file and the list."""
    lists = {}
    for f in files:
        sums_file = f.parent / "SHA256SUMS"
        if sums_file not in lists:
            lists[sums_file] = read_sha256sums(sums_file) if sums_file.is_file() else {}
        if f.name in lists[sums_file]:
            verify_sha256(f, lists[sums_file][f.name], sums_file)


def write_raw(p, staged, folder, sources) -> Dict:
    """``raw/``: every split checked (UTF-8, line counts, the SHA256SUMS of the file's folder when there)
    with its empty pairs removed and stray line breaks replaced.  ``sources``: ``{split: (src_file,
    [ref_files])}``; ``folder``: the input folder, as recorded."""
    record = {"data": str(folder), "splits": {}}
    for split in SPLITS:
        src_file, ref_files = sources[split]
        verify_listed([src_file, *ref_files])
        record["splits"][split] = _raw_split(p, staged, split, [src_file, *ref_files])
    return record


def write_test_set(p, staged, subset: str, name: str, sources) -> Dict:
    """``raw/SUBSET.*``: extra test set ``name`` checked and cleaned as :func:`write_raw` does;
    ``sources``: ``(src_file, [ref_files])``.  Returns its counts with its name and input files."""
    src_file, ref_files = sources
    files = [src_file, *ref_files]
    verify_listed(files)
    record = _raw_split(p, staged, subset, files)
    inputs = {str(f): os.path.getsize(f) for f in files}
    return {"name": name, "data": str(Path(src_file).parent), "inputs": inputs, **record}


def _raw_split(p, staged, split: str, files) -> Dict:
    c = p.cfg
    names = [f"{split}.{c.src}", f"{split}.{c.tgt}"] + [f"{split}.{c.tgt}.ref{i}" for i in range(1, len(files) - 1)]
    outs = [staged.open(p.path("raw", n)) for n in names]
    read = removed = 0
    rows = read_parallel(files, p.split_limit(split))
    while chunk := [row for _, row in islice(rows, BLOCK)]:
        read += len(chunk)
        kept, n = drop_empty(chunk, columns=(0, 1))  # an empty extra reference keeps its pair
        removed += n
        for row in kept:
            for f, text in zip(outs, row):
                f.write(clean_line(text) + "\n")
    listing = " and ".join(str(f) for f in files)
    if read == 0:
        raise PrepareError(f"split {split}: {listing} are empty")
    if removed == read:
        raise PrepareError(f"split {split}: all {read} pairs of {listing} have an empty or blank line")
    return {"read": read, "empty_removed": removed, "pairs": read - removed, "references": len(files) - 1}


def tokenise(p, staged, splits: Sequence[str] = SPLITS) -> Dict:
    """``tok/SPLIT.*``: the raw pairs of ``splits`` Moses-tokenised (jieba first for Chinese) on ``p.workers``
    processes."""
    if set(JIEBA_LANGS) & set(p.langs()):
        load_jieba()  # once here, not in every worker
    lines = {}
    with ChunkMapper(p.workers) as mapper:
        for split in splits:
            outs = [staged.open(p.path("tok", f"{split}.{lang}")) for lang in p.langs()]
            n = 0
            for s, t in mapper.map("tok", p.langs(), p.read_pairs("raw", split)):
                outs[0].write(s + "\n")
                outs[1].write(t + "\n")
                n += 1
                if n % 1000000 == 0:
                    p.log(f"tokenise: {split} {n:,} lines")
            lines[split] = n
    return {"lines": lines}


def learn_codes(p, staged, name: str) -> Dict:
    """``NAME/codes.joint`` or ``NAME/codes.{SRC,TGT}``: subword-nmt BPE learned on the tokenised training
    text; records the merges requested and learned (fewer when the vocabulary runs out of pairs)."""
    from subword_nmt.learn_bpe import learn_bpe

    merges = p.merges(name)
    groups = {"joint": list(p.langs())} if "joint" in merges else {lang: [lang] for lang in p.langs()}
    record = {"joint": "joint" in merges, "merges": {}}
    for key, langs in groups.items():
        vocab = Counter()
        for lang in langs:
            with open(p.path("tok", f"train.{lang}"), encoding="utf-8") as f:
                for line in f:
                    vocab.update(w for w in line.rstrip("\n").split(" ") if w)
        codes = io.StringIO()
        learn_bpe([f"{w} {n}\n" for w, n in vocab.items()], codes, merges[key], is_dict=True)
        staged.open(p.path(name, f"codes.{key}")).write(codes.getvalue())
        learned = codes.getvalue().count("\n") - 1  # minus the "#version" header
        record["merges"][key] = {"requested": merges[key], "learned": learned}
    return record


def apply_bpe(p, staged, name: str, splits: Sequence[str] = SPLITS) -> Dict:
    """``NAME/{split}.{SRC,TGT}`` for ``splits``: the tokenised pairs in subwords; training pairs
    length-filtered (subwords for MAX_LEN, the words before BPE for MAX_RATIO).  A filter that removes every
    pair raises."""
    codes = p.codes_files(name)
    record = {}
    with ChunkMapper(p.workers) as mapper:
        for split in splits:
            outs = [staged.open(p.path(name, f"{split}.{lang}")) for lang in p.langs()]
            bpe_pairs = mapper.map("bpe", tuple(str(codes[lang]) for lang in p.langs()), p.read_pairs("tok", split))
            record[split] = stats = _apply_split(p, split, bpe_pairs, outs)
            if stats["kept"] == 0 and split == "train":
                c = p.cfg
                raise PrepareError(
                    f"{name}: the length filter (MAX_LEN={c.max_len}, MAX_RATIO={c.max_ratio}) "
                    f"removed all {stats['read']} training pairs"
                )
    return record


def _apply_split(p, split: str, bpe_pairs, outs) -> Dict:
    word_pairs = p.read_pairs("tok", split)  # the same pairs before BPE, for the ratio
    read, stats = 0, dict.fromkeys(LENGTH_VERDICTS, 0)
    while chunk := list(islice(bpe_pairs, BLOCK)):
        read += len(chunk)
        words = list(islice(word_pairs, len(chunk)))
        if split == "train":
            chunk, s = length_filter(chunk, p.cfg.max_len, p.cfg.max_ratio, words)
            stats = {k: stats[k] + s[k] for k in stats}
        for s_line, t_line in chunk:
            outs[0].write(s_line + "\n")
            outs[1].write(t_line + "\n")
    if split != "train":
        return {"read": read, "kept": read}
    return {"read": read, **stats, "kept": read - sum(stats.values())}


def binarise(p, staged, name: str) -> Dict:
    """``NAME/bin``: fairseq-preprocess of ``NAME/{split}.*`` (its output in ``NAME/preprocess.log``), the
    extra test sets ``p.extra`` with the main one (``--testpref test,test1,...``); records the vocabulary
    sizes and the test subsets.  A failing fairseq-preprocess raises with the end of its log."""
    c = p.cfg
    prefix = p.path(name)
    tmp = staged.directory(p.path(name, "bin"))
    log_path = p.path(name, "preprocess.log")
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", c.src, "--target-lang", c.tgt]
    tests = ["test", *p.extra]
    for split in SPLITS:
        cmd += [f"--{split}pref", ",".join(str(prefix / s) for s in tests) if split == "test" else str(prefix / split)]
    cmd += ["--destdir", str(tmp), "--workers", str(p.workers)]
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-20:])
        raise PrepareError(
            f"fairseq-preprocess failed for {name} (exit code {rc}); full log: {log_path}; its end:\n{tail}"
        )
    _positional_subsets(Path(tmp), tests, c.src, c.tgt)
    vocab = {lang: count_lines(tmp / f"dict.{lang}.txt") + 4 for lang in p.langs()}  # + bos/pad/eos/unk
    return {"vocab": vocab, "test_subsets": tests}


def _positional_subsets(folder: Path, subsets: List[str], src: str, tgt: str) -> None:
    """fairseq-preprocess names the test prefixes test, test1, test2, ... in order; when a set before one is
    missing, rename its files to the subset of its position in the config (``subsets``), highest first."""
    for k in reversed(range(1, len(subsets))):
        if subsets[k] != f"test{k}":
            for lang in (src, tgt):
                for ext in ("bin", "idx"):
                    os.replace(
                        folder / f"test{k}.{src}-{tgt}.{lang}.{ext}", folder / f"{subsets[k]}.{src}-{tgt}.{lang}.{ext}"
                    )


# ----------------------------------------------------------------------------------------------
# the summary


def summarise(p) -> Dict:
    """Write the counts of every stage into ``prepare.json`` (splits, test_sets, bpe) and print them; returns
    the state.  ``test_sets``: ``[{"subset": "test", "name": STEM, "missing": False, "pairs": n, ...},
    {"subset": "test1", "name": STEM, "missing": True, "reason": why}, ...]`` in the config's order."""
    st = p.state["stages"]
    splits = {split: _counts(st["raw"]["splits"][split]) for split in SPLITS}
    test_sets = []
    for subset, stem in p.cfg.test_subsets().items():
        if subset in p.missing:
            test_sets.append({"subset": subset, "name": stem, "missing": True, "reason": p.missing[subset]["reason"]})
        else:
            counts = splits["test"] if subset == "test" else _counts(st[f"raw/{subset}"])
            test_sets.append({"subset": subset, "name": stem, "missing": False, **counts})
    bpe = {}
    for name in BPE_SETTINGS:
        pairs = {s: st[f"{name}/apply"][s]["kept"] for s in SPLITS}
        pairs.update({s: st[f"{name}/apply/{s}"][s]["kept"] for s in p.extra})
        bpe[name] = {
            "joint": st[f"{name}/codes"]["joint"],
            "merges": st[f"{name}/codes"]["merges"],
            "filter": {"train": st[f"{name}/apply"]["train"]},
            "pairs": pairs,
            "vocab": st[f"{name}/bin"]["vocab"],
            "bin": str(p.path(name, "bin")),
        }
    p.state.update(
        task=p.cfg.task, src=p.cfg.src, tgt=p.cfg.tgt, quick=p.quick, splits=splits, test_sets=test_sets, bpe=bpe
    )
    p.save_state()
    p.log(f"summary ({p.state_path})")
    for line in summary_lines(splits, bpe, test_sets):
        p.out(line)
    return p.state


def _counts(record: Dict) -> Dict:
    keys = (
        ("lines_read", "read"),
        ("empty_removed", "empty_removed"),
        ("pairs", "pairs"),
        ("references", "references"),
    )
    return {ours: record[theirs] for ours, theirs in keys}


def _split_line(label: str, s: Dict) -> str:
    line = f"   {label}: {s['lines_read']} pairs read, {s['empty_removed']} empty removed"
    return line + (f", {s['references']} references" if s["references"] > 1 else "")


def summary_lines(splits: Dict, bpe: Dict, test_sets: Sequence[Dict] = ()):
    """The printed summary: one line per split (pairs read, removed), per extra or missing test set (when
    ``test_sets`` has more than one) and per BPE setting."""
    lines = []
    several = len(test_sets) > 1
    for split in SPLITS:
        line = _split_line(f"test ({test_sets[0]['name']})" if several and split == "test" else split, splits[split])
        if split == "train":
            for name in BPE_SETTINGS:
                f = bpe[name]["filter"]["train"]
                line += f"; {name}: {f['too_long']} too long, {f['bad_ratio']} bad ratio"
                line += f", {f['too_short']} empty" if f["too_short"] else ""
                line += " removed"
        lines.append(line)
    for t in test_sets[1:]:
        label = f"{t['subset']} ({t['name']})"
        lines.append(f"   {label}: MISSING ({t['reason']})" if t["missing"] else _split_line(label, t))
    for name in BPE_SETTINGS:
        b = bpe[name]
        merges = ", ".join(
            f"{k} {m['learned']}" + (f" (of {m['requested']})" if m["learned"] < m["requested"] else "")
            for k, m in b["merges"].items()
        )
        vocab = ", ".join(f"{lang} {n}" for lang, n in b["vocab"].items())
        lines.append(
            f"   {name}: {'joint' if b['joint'] else 'separate'} BPE, merges {merges}; "
            f"{b['pairs']['train']} training pairs; vocabulary {vocab}"
        )
    return lines
