"""One ``mdn-prepare`` run over a WORK folder: its settings and their fingerprint, the state file
``prepare.json``, the stage runner (skip what is done, stage outputs, record counts) and the order of the
stages (:mod:`.stages` holds what each one does)."""

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

from ..files import write_json
from . import stages
from .config import BPE_SETTINGS, QUICK_EVAL_LINES, SPLITS, PrepareError, TaskConfig
from .download import download_multi30k, download_wmt14, find_split_files
from .staged import StagedFiles
from .text import nonempty, read_parallel
from .tokenise import JIEBA_LANGS, tokenizer_description


def prepare_settings(cfg: TaskConfig, quick: bool) -> Dict:
    """Everything the outputs depend on, as recorded in ``prepare.json`` (its hash: the fingerprint)."""
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

    def split_files(self, folder: str) -> List[Path]:
        """``WORK/folder/{train,valid,test}.{SRC,TGT}``."""
        return [self.path(folder, f"{s}.{lang}") for s in SPLITS for lang in self.langs()]

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
        for split in SPLITS:
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
        folder = self.resolve_data()
        sources = {split: find_split_files(folder, split, stem, c.src, c.tgt) for split, stem in c.splits.items()}
        inputs = {p.name: os.path.getsize(p) for srcf, refs in sources.values() for p in [srcf, *refs]}
        if "inputs" in self.state and self.state["inputs"] != inputs:
            raise PrepareError(
                f"{self.work} was prepared from other input files ({self.state['inputs']} now "
                f"{inputs}): use another --work, or delete {self.work} to prepare it again"
            )
        self.state["inputs"] = inputs
        title = f"raw text: check and remove empty pairs ({folder}) -> raw/"
        return self.stage(
            "raw", title, self.raw_outputs(), [], lambda staged: stages.write_raw(self, staged, folder, sources)
        )

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
        self.stage(
            f"{name}/bin",
            f"{name}: binarise (fairseq-preprocess) -> {name}/bin",
            self.bin_outputs(name),
            [f"{name}/apply"],
            lambda staged: stages.binarise(self, staged, name),
        )

    def resolve_data(self) -> Path:
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
            raise PrepareError(
                f"{why} and {c.task} cannot be downloaded: pass --data DIR. Expected layout "
                f"(SPLITS={splits}; from {c.path}):\n{layout}"
            )
        dest = self.path("download")
        fetcher = download_multi30k if c.download == "multi30k" else download_wmt14
        suffix = ".gz" if c.download == "multi30k" else ""
        files = [dest / f"{stem}.{lang}{suffix}" for stem in c.splits.values() for lang in self.langs()]
        self.stage(
            "download",
            f"download ({c.download}; {why}) -> {dest}",
            files,
            [],
            lambda staged: fetcher(c, dest, self.out),
        )
        return dest
