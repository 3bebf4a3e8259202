"""One ``mdn-prepare`` run over a WORK folder: its settings and their fingerprint, the state file
``prepare.json``, the stage runner (skip what is done, stage outputs, record counts) and the order of the
stages (:mod:`.stages` holds what each one does).

A config may name several test sets (``test=MAIN,EXTRA,...``).  The main one is the split ``test``; each
extra one is prepared by its own stages as fairseq subset ``test1``, ``test2``, ... (its position in the
list) and binarised with the rest; one that is neither in the input folders nor downloadable is reported,
recorded missing in ``prepare.json`` (``test_sets``) and left out, and the run goes on.
"""

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

from ..files import write_json
from . import stages
from .config import BPE_SETTINGS, QUICK_EVAL_LINES, SPLITS, PrepareError, TaskConfig
from .download import DownloadFailed, download_multi30k, download_wmt14, find_split_files, multi30k_missing
from .staged import StagedFiles
from .text import nonempty, read_parallel
from .tokenise import JIEBA_LANGS, tokenizer_description


def prepare_settings(cfg: TaskConfig, quick: bool) -> Dict:
    """Everything the outputs depend on, as recorded in ``prepare.json`` (its hash: the fingerprint).

    The extra test sets are not in it: nothing is learned from them, so adding one to a prepared WORK
    prepares just that set (and binarises again) instead of refusing the WORK.
    """
    return {
        "task": cfg.task,
        "src": cfg.src,
        "tgt": cfg.tgt,
        "splits": cfg.splits,
        "quick": quick,
        "train_lines": cfg.quick_train_lines if quick else None,
        "eval_lines": QUICK_EVAL_LINES if quick else None,
        "tokenizer": {lang: tokenizer_description(lang) for lang in (cfg.src, cfg.tgt)},
        "bpe": {name: {"joint": cfg.bpe[name].joint, "merges": cfg.merges(name, quick)} for name in BPE_SETTINGS},
        "max_len": cfg.max_len,
        "max_ratio": cfg.max_ratio,
    }


def fingerprint(settings: Dict) -> str:
    """16 hex digits of the SHA-256 of ``settings`` as sorted JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def load_state(work: Path, settings: Dict) -> Dict:
    """``WORK/prepare.json`` when it was written with these ``settings``, else a fresh state.

    A WORK that is a file, an unreadable prepare.json or one of other settings raises :class:`PrepareError`
    (listing the settings that differ).
    """
    if work.exists() and not work.is_dir():
        raise PrepareError(f"--work {work} is a file, not a folder")
    path = work / "prepare.json"
    if not path.is_file():
        return {"fingerprint": fingerprint(settings), "settings": settings, "stages": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PrepareError(f"{path} is unreadable ({e}): delete {work} or use another --work") from e
    if state.get("fingerprint") != fingerprint(settings):
        old = state.get("settings", {})
        diffs = [
            f"{k}: {old.get(k)!r} -> {settings.get(k)!r}"
            for k in sorted(set(old) | set(settings))
            if old.get(k) != settings.get(k)
        ]
        raise PrepareError(
            f"{work} was prepared with other settings ({'; '.join(diffs) or 'fingerprint differs'}): "
            f"use another --work, or delete {work} to prepare it again"
        )
    state.setdefault("stages", {})
    return state


class Preparation:
    """One ``mdn-prepare`` run: a task's settings, the WORK folder and its state (``prepare.json``).

    :meth:`run` runs the stages in order (raw text, tokens, then per BPE setting: codes, BPE text,
    binaries) and prints a summary through ``out``.  A stage is skipped when prepare.json records it, its
    outputs are there and none of the stages it reads from ran again; a failing stage leaves its outputs as
    they were.  Bad settings or input raise :class:`PrepareError`.
    """

    def __init__(self, cfg: TaskConfig, work, data=None, quick=False, workers=1, out: Callable[[str], None] = print):
        self.cfg, self.work, self.quick, self.workers, self.out = cfg, Path(work), quick, max(1, workers), out
        self.data_arg = Path(data) if data else None
        self.start = time.time()
        self.ran = set()
        self.state_path = self.work / "prepare.json"
        self.settings = prepare_settings(cfg, quick)
        self.state = load_state(self.work, self.settings)
        self.extra: List[str] = []  # the extra test sets' subsets (test1, ...) prepared in this run
        self.missing: Dict[str, Dict] = {}  # subset -> {"name": stem, "reason": why} of the missing ones

    # -- helpers for the stages

    def merges(self, name: str) -> Dict[str, int]:
        """The merges BPE setting ``name`` learns in this run (see :meth:`TaskConfig.merges`)."""
        return self.cfg.merges(name, self.quick)

    def save_state(self):
        """Write ``prepare.json`` (atomically; an unchanged file keeps its mtime)."""
        write_json(self.state_path, self.state, keep_unchanged=True)

    def log(self, msg: str):
        """Print ``== [prepare Ns] msg`` (N: seconds since the run started)."""
        self.out(f"== [prepare {time.time() - self.start:.0f}s] {msg}")

    def path(self, *parts) -> Path:
        """``WORK/part/...``."""
        return self.work.joinpath(*parts)

    def langs(self):
        """``(SRC, TGT)``."""
        return (self.cfg.src, self.cfg.tgt)

    def read_pairs(self, folder: str, split: str):
        """The (src, tgt) lines of ``WORK/folder/split.*``."""
        return (row for _, row in read_parallel([self.path(folder, f"{split}.{lang}") for lang in self.langs()]))

    def split_limit(self, split: str) -> Optional[int]:
        """How many pairs of ``split`` are read: all, or with --quick the first QUICK_TRAIN_LINES / 200."""
        if not self.quick:
            return None
        return self.cfg.quick_train_lines if split == "train" else QUICK_EVAL_LINES

    # -- outputs of the stages

    def split_files(self, folder: str, splits: Iterable[str] = SPLITS) -> List[Path]:
        """``WORK/folder/{split}.{SRC,TGT}`` for ``splits`` (default: train, valid, test)."""
        return [self.path(folder, f"{s}.{lang}") for s in splits for lang in self.langs()]

    def test_set_raw_outputs(self, subset: str) -> List[Path]:
        """``raw/{subset}.{SRC,TGT}`` of an extra test set, extra references included once recorded."""
        refs = self.state["stages"].get(f"raw/{subset}", {}).get("references", 1)
        return self.split_files("raw", [subset]) + [
            self.path("raw", f"{subset}.{self.cfg.tgt}.ref{i}") for i in range(1, refs)
        ]

    def raw_outputs(self) -> List[Path]:
        """The files of ``raw/``, extra references included once the raw stage recorded them."""
        c, rec = self.cfg, self.state["stages"].get("raw", {})
        outs = []
        for split in SPLITS:
            outs += [self.path("raw", f"{split}.{c.src}"), self.path("raw", f"{split}.{c.tgt}")]
            refs = rec.get("splits", {}).get(split, {}).get("references", 1)
            outs += [self.path("raw", f"{split}.{c.tgt}.ref{i}") for i in range(1, refs)]
        return outs

    def codes_files(self, name: str) -> Dict[str, Path]:
        """``{lang: codes file}`` of BPE setting ``name`` (one shared ``codes.joint`` for a joint setting)."""
        if self.cfg.bpe[name].joint:
            return dict.fromkeys(self.langs(), self.path(name, "codes.joint"))
        return {lang: self.path(name, f"codes.{lang}") for lang in self.langs()}

    def bin_outputs(self, name: str) -> List[Path]:
        """The dictionaries and ``.bin``/``.idx`` files fairseq-preprocess writes into ``NAME/bin``."""
        c, d = self.cfg, self.path(name, "bin")
        outs = [d / f"dict.{c.src}.txt", d / f"dict.{c.tgt}.txt"]
        for split in [*SPLITS, *self.extra]:
            for lang in self.langs():
                outs += [d / f"{split}.{c.src}-{c.tgt}.{lang}.{ext}" for ext in ("bin", "idx")]
        return outs

    # -- the stage runner

    def done(self, key: str, outputs: Iterable) -> bool:
        """True when prepare.json records stage ``key`` and every one of its ``outputs`` is a non-empty file."""
        return key in self.state["stages"] and all(nonempty(p) for p in outputs)

    def stage(self, key: str, title: str, outputs: List, deps: Iterable[str], fn) -> Dict:
        """Run ``fn(staged)`` (a :class:`StagedFiles`; it returns the stage's record) unless ``key`` is recorded
        done, its ``outputs`` are there and none of the stages ``deps`` ran in this run.  Returns the record."""
        if self.done(key, outputs) and not (set(deps) & self.ran):
            self.log(f"{title}: done (skipped)")
            return self.state["stages"][key]
        self.log(title)
        t0 = time.time()
        with StagedFiles() as staged:
            record = fn(staged)
        record["seconds"] = round(time.time() - t0, 1)
        self.state["stages"][key] = record
        self.ran.add(key)
        self.save_state()
        return record

    # -- the stages, in order

    def run(self):
        """Every stage, then the summary."""
        c = self.cfg
        self.log(f"{c.task}: {c.src} -> {c.tgt}{' (--quick)' if self.quick else ''}; config {c.path}; WORK {self.work}")
        self.run_raw()
        jieba = ", jieba" if set(JIEBA_LANGS) & set(self.langs()) else ""
        title = f"tokenise (sacremoses{jieba}; {self.workers} workers) -> tok/"
        self.stage("tok", title, self.split_files("tok"), ["raw"], lambda staged: stages.tokenise(self, staged))
        for subset, stem in list(c.test_subsets().items())[1:]:
            self.run_test_set(subset, stem)
        for name in BPE_SETTINGS:
            self.run_bpe(name)
        stages.summarise(self)

    def run_raw(self) -> Dict:
        """The first stages: find (or download) the input, check it, write ``raw/``; returns the raw record.

        Skipped, input and download included, when ``raw/`` is done: the input may be gone by then.
        """
        c = self.cfg
        if self.done("raw", self.raw_outputs()):
            self.log("raw text: done (skipped)")
            return self.state["stages"]["raw"]
        folders = self.resolve_data()
        sources = {split: find_split_files(folders, split, stem, c.src, c.tgt) for split, stem in c.splits.items()}
        inputs = {p.name: os.path.getsize(p) for srcf, refs in sources.values() for p in [srcf, *refs]}
        if "inputs" in self.state and self.state["inputs"] != inputs:
            raise PrepareError(
                f"{self.work} was prepared from other input files ({self.state['inputs']} now "
                f"{inputs}): use another --work, or delete {self.work} to prepare it again"
            )
        self.state["inputs"] = inputs
        title = f"raw text: check and remove empty pairs ({folders[0]}) -> raw/"
        return self.stage(
            "raw", title, self.raw_outputs(), [], lambda staged: stages.write_raw(self, staged, folders[0], sources)
        )

    def run_test_set(self, subset: str, stem: str):
        """Extra test set ``stem`` as subset ``subset``: found (or downloaded), checked -> ``raw/SUBSET.*``,
        tokenised -> ``tok/SUBSET.*``, and added to :attr:`extra`; when it cannot be had, a warning naming it,
        the folders searched, the files tried and the download error, and an entry in :attr:`missing`."""
        key = f"raw/{subset}"
        if self.state["stages"].get(key, {}).get("name", stem) != stem:  # another set at this position now
            del self.state["stages"][key]
        sources, outputs = None, self.test_set_raw_outputs(subset)
        if not self.done(key, outputs):
            try:
                sources = self.find_test_set(stem)
            except DownloadFailed as e:
                self.missing[subset] = {"name": stem, "reason": str(e)}
                self.log(
                    f"WARNING: test set {stem} ({subset}) is missing: {e}. Going on without it (prepare.json and "
                    "the results table record it as missing)"
                )
                return
        title = f"test set {stem}: check and remove empty pairs -> raw/{subset}.*"
        self.stage(key, title, outputs, [], lambda staged: stages.write_test_set(self, staged, subset, stem, sources))
        title = f"test set {stem}: tokenise -> tok/{subset}.*"
        tok = self.split_files("tok", [subset])
        self.stage(f"tok/{subset}", title, tok, [key], lambda staged: stages.tokenise(self, staged, [subset]))
        self.extra.append(subset)

    def find_test_set(self, stem: str):
        """``(source, [references])`` of extra test set ``stem`` in :meth:`search_folders`, else (Multi30k)
        downloaded into WORK/download.  Raises :class:`DownloadFailed` naming the folders searched, the files
        tried and why they could not be fetched; a damaged download raises :class:`PrepareError`."""
        c, folders = self.cfg, self.search_folders()
        try:
            return find_split_files(folders, "test", stem, c.src, c.tgt)
        except PrepareError:
            pass
        where = ", ".join(str(f) for f in folders) or "no local folder (DATA is not a folder and --data was not given)"
        tried = f"{stem}.{c.src} and {stem}.{c.tgt} (plain or .gz)"
        if c.download != "multi30k":
            raise DownloadFailed(f"{tried} not found in {where}, and DOWNLOAD={c.download} cannot fetch single files")
        try:
            download_multi30k(c, self.path("download"), self.out, stems=[stem], present=folders)
        except DownloadFailed as e:
            raise DownloadFailed(f"{tried} not found in {where}; {e}") from e
        return find_split_files(self.search_folders(), "test", stem, c.src, c.tgt)

    def run_bpe(self, name: str):
        """BPE setting ``name``: learn the codes, apply them (and the length filter), binarise."""
        c = self.cfg
        merges = ", ".join(f"{k} {v}" for k, v in self.merges(name).items())
        self.stage(
            f"{name}/codes",
            f"{name}: learn BPE ({merges} merges) -> {name}/codes.*",
            sorted(set(self.codes_files(name).values())),
            ["tok"],
            lambda staged: stages.learn_codes(self, staged, name),
        )
        self.stage(
            f"{name}/apply",
            f"{name}: apply BPE, filter train (MAX_LEN={c.max_len}, MAX_RATIO={c.max_ratio}) -> {name}/",
            self.split_files(name),
            ["tok", f"{name}/codes"],
            lambda staged: stages.apply_bpe(self, staged, name),
        )
        for subset in self.extra:
            self.stage(
                f"{name}/apply/{subset}",
                f"{name}: apply BPE to test set {c.test_subsets()[subset]} -> {name}/{subset}.*",
                self.split_files(name, [subset]),
                [f"tok/{subset}", f"{name}/codes"],
                lambda staged, s=subset: stages.apply_bpe(self, staged, name, [s]),
            )
        self.stage(
            f"{name}/bin",
            f"{name}: binarise (fairseq-preprocess) -> {name}/bin",
            self.bin_outputs(name),
            [f"{name}/apply"] + [f"{name}/apply/{s}" for s in self.extra],
            lambda staged: stages.binarise(self, staged, name),
        )

    def search_folders(self) -> List[Path]:
        """Where input files are looked for, in order: --data (else the config's DATA) when it is a folder,
        then WORK/download when there is one (what this or an earlier run downloaded)."""
        local = self.data_arg if self.data_arg is not None else self.cfg.data
        folders = [local] if local is not None and local.is_dir() else []
        dest = self.path("download")
        return folders + [dest] if dest.is_dir() and dest not in folders else folders

    def resolve_data(self) -> List[Path]:
        """The folders to read train, valid and the main test set from (:meth:`search_folders`), once what
        they lack is downloaded into WORK/download: Multi30k file by file, WMT14 whole when there is no local
        folder.  A missing --data, or input that is neither local nor downloadable, raises."""
        c = self.cfg
        layout = "\n".join(c.comments)
        if self.data_arg is not None and not self.data_arg.is_dir():
            raise PrepareError(f"--data {self.data_arg}: no such folder; the config {c.path} says:\n{layout}")
        local_dir = self.data_arg if self.data_arg is not None else c.data
        local = [local_dir] if local_dir is not None and local_dir.is_dir() else []
        why = f"the data folder {c.data} is missing" if c.data is not None else f"DATA is empty in {c.path}"
        dest = self.path("download")
        if c.download == "multi30k":
            missing = multi30k_missing(c, c.splits.values(), [*local, dest])
            if missing:
                why = f"{', '.join(missing)} not in {local[0]}" if local else why
                title, files = f"download ({c.download}; {why}) -> {dest}", [dest / n for n in missing]
                try:
                    self.stage(
                        "download", title, files, [], lambda st: download_multi30k(c, dest, self.out, present=local)
                    )
                except DownloadFailed as e:
                    raise DownloadFailed(f"{why}; {e}") from e
            return self.search_folders()
        if local:
            return local
        if c.download == "none":
            splits = " ".join(f"{k}={v}" for k, v in c.splits.items())
            raise PrepareError(
                f"{why} and {c.task} cannot be downloaded: pass --data DIR. Expected layout "
                f"(SPLITS={splits}; from {c.path}):\n{layout}"
            )
        files = [dest / f"{stem}.{lang}" for stem in c.splits.values() for lang in self.langs()]
        self.stage(
            "download",
            f"download ({c.download}; {why}) -> {dest}",
            files,
            [],
            lambda st: download_wmt14(c, dest, self.out),
        )
        return [dest]
