"""Task configuration: the ``configs/TASK.sh`` files, read the way mdn-prepare needs them.

The shipped task configs (and ``multi30k.sha256``) are package data, ``mdn_fairseq/configs/``, read with
:mod:`importlib.resources`, so ``mdn-prepare --task NAME`` works from an installed wheel; the checkout's
top-level ``configs`` is a link to that folder (the recipes ``source`` the files from there).
``--config FILE`` reads a user's own file in the same format.  No torch, no fairseq.
"""

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import MDNError

SPLITS = ("train", "valid", "test")
BPE_SETTINGS = ("baseline", "mdn")
DOWNLOADS = ("multi30k", "wmt14_en_de", "wmt14_en_fr", "none")
QUICK_EVAL_LINES = 200  # --quick: valid and test are cut to their first 200 pairs


class PrepareError(MDNError):
    """A problem with mdn-prepare's settings or input; the CLI prints ``mdn-prepare: <message>`` and exits 2."""


def shipped_configs():
    """The folder of the shipped task configs and checksums (package data ``mdn_fairseq/configs``).

    An :mod:`importlib.resources` traversable: a :class:`~pathlib.Path` for an installed or checked-out
    package (a zipped package gives a ``zipfile.Path``).
    """
    try:
        from importlib.resources import files
    except ImportError:  # Python 3.8: no importlib.resources.files
        return Path(__file__).resolve().parents[1] / "configs"
    return files("mdn_fairseq") / "configs"


def as_resource(path):
    """``path`` as something with ``is_file()``, ``read_text()`` and ``name``: a str or path-like becomes a
    :class:`~pathlib.Path`; an :mod:`importlib.resources` traversable is returned as it is."""
    return Path(path) if isinstance(path, (str, os.PathLike)) else path


def known_tasks(config_dir=None) -> List[str]:
    """The task names (``NAME`` of ``NAME.sh``) in ``config_dir`` (default: the shipped configs), sorted."""
    folder = as_resource(config_dir) if config_dir is not None else shipped_configs()
    return sorted(p.name[: -len(".sh")] for p in folder.iterdir() if p.name.endswith(".sh"))


def config_path_for_task(name: str, config_dir=None):
    """The config of task ``name``: ``NAME.sh`` in ``config_dir`` (default: the shipped configs).

    Raises :class:`PrepareError` listing the known tasks when there is no such config.
    """
    folder = as_resource(config_dir) if config_dir is not None else shipped_configs()
    path = folder / f"{name}.sh"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not path.is_file():
        raise PrepareError(f"unknown task '{name}' (known tasks: {', '.join(known_tasks(folder))})")
    return path


# ----------------------------------------------------------------------------------------------
# KEY=VALUE lines

_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)")
_PLAIN_VALUE = re.compile(r"[^\s\"'`$\\;&|<>()]*")


def _read_text(path) -> str:
    try:
        return as_resource(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PrepareError(f"cannot read config {path}: {e}") from e


def read_config(path) -> Dict[str, str]:
    """Parse a ``configs/TASK.sh`` file (``KEY=VALUE`` / ``KEY="VALUE"`` lines, ``#`` comment lines).

    Only what bash reads the same way is accepted: no inline comments, no spaces outside quotes, no
    ``$`` expansions.  Returns ``{KEY: VALUE}`` (quotes stripped, the last assignment wins); an
    unreadable file or a malformed line raises :class:`PrepareError` naming ``file:line``.
    """
    values = {}
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _ASSIGNMENT.fullmatch(stripped)
        value = m and _unquote(m.group(2))
        if value is None:
            raise PrepareError(
                f'{path}:{n}: malformed line {line!r}: expected KEY=VALUE or KEY="VALUE" '
                "(no spaces outside quotes, no inline comments, no $ expansions)"
            )
        values[m.group(1)] = value
    return values


def _unquote(raw: str) -> Optional[str]:
    """The value of a bash assignment's right-hand side, or None when we would read it differently."""
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        inner = raw[1:-1]
        return None if re.search(r'["`$\\]', inner) else inner
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        inner = raw[1:-1]
        return None if "'" in inner else inner
    return raw if _PLAIN_VALUE.fullmatch(raw) else None


# ----------------------------------------------------------------------------------------------
# the checked settings


@dataclass
class BpeSetting:
    """One BPE setting: a joint model (``src_merges`` merges) or one model per language."""

    joint: bool
    src_merges: int
    tgt_merges: int


@dataclass
class TaskConfig:
    """The settings of ``configs/TASK.sh`` that mdn-prepare uses (see :func:`load_config`)."""

    path: Path  # the config file (a Path, or an importlib.resources traversable for a shipped one)
    task: str
    src: str
    tgt: str
    data: Optional[Path] = None  # None: no local folder configured
    splits: Dict[str, str] = field(default_factory=dict)  # split -> file stem (test: the first test set)
    test_sets: List[str] = field(default_factory=list)  # every test set's file stem, the main one first
    download: str = "none"
    bpe: Dict[str, BpeSetting] = field(default_factory=dict)  # "baseline" / "mdn" -> BpeSetting
    max_len: int = 250
    max_ratio: float = 1.5
    quick_train_lines: int = 0
    quick_src_merges: int = 0
    quick_tgt_merges: int = 0
    comments: List[str] = field(default_factory=list)  # the config's header comment (explains the data layout)

    def merges(self, name: str, quick: bool = False) -> Dict[str, int]:
        """``{"joint": n}`` or ``{SRC: n, TGT: n}``: the merges BPE setting ``name`` learns (``quick``: the
        QUICK_*_MERGES)."""
        b = self.bpe[name]
        s, t = (self.quick_src_merges, self.quick_tgt_merges) if quick else (b.src_merges, b.tgt_merges)
        return {"joint": s} if b.joint else {self.src: s, self.tgt: t}

    def test_subsets(self) -> Dict[str, str]:
        """``{fairseq subset: test set stem}`` in the config's order: ``test``, ``test1``, ``test2``, ... (the
        names ``fairseq-preprocess --testpref A,B,...`` gives; a set that is missing keeps its position)."""
        return {subset_name(k): stem for k, stem in enumerate(self.test_sets or [self.splits["test"]])}


def subset_name(k: int) -> str:
    """The fairseq subset of the ``k``-th test set (0-based): ``test``, ``test1``, ``test2``, ..."""
    return "test" if k == 0 else f"test{k}"


class _Values:
    """The ``KEY=VALUE`` pairs of one config, read with checks whose errors name the file and the key."""

    def __init__(self, path, values: Dict[str, str]):
        self.path, self.values = path, values

    def error(self, message: str) -> PrepareError:
        return PrepareError(f"{self.path}: {message}")

    def get(self, key: str) -> str:
        if key not in self.values:
            raise self.error(f"{key} is missing")
        return self.values[key]

    def number(self, key: str, kind=int, minimum=0):
        raw = self.get(key)
        try:
            x = kind(raw)
        except ValueError:
            raise self.error(f"{key}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
        if x < minimum:
            raise self.error(f"{key}={raw} must be at least {minimum}")
        return x

    def flag(self, key: str) -> bool:
        if self.get(key) not in ("0", "1"):
            raise self.error(f"{key}={self.values[key]!r} must be 0 or 1")
        return self.values[key] == "1"

    def language(self, key: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z_-]*", self.get(key)):
            raise self.error(f"{key}={self.values[key]!r} is not a language code")
        return self.values[key]

    def splits(self) -> Tuple[Dict[str, str], List[str]]:
        """``({split: stem}, [test stems])`` from ``SPLITS``: ``test`` may name several sets (comma list, the
        first is the main one and ``splits["test"]``)."""
        splits, tests = {}, []
        for item in self.get("SPLITS").split():
            split, _, stems = item.partition("=")
            names = stems.split(",")
            if split not in SPLITS or not all(names) or any("/" in n for n in names):
                raise self.error(
                    f"SPLITS item {item!r}: expected train=STEM valid=STEM test=STEM[,STEM...] (file stems, no '/')"
                )
            if len(names) > 1 and split != "test":
                raise self.error(f"SPLITS item {item!r}: only test may name several sets (comma list)")
            if len(set(names)) < len(names):
                raise self.error(f"SPLITS item {item!r}: a test set is named twice")
            splits[split], tests = names[0], names if split == "test" else tests
        if set(splits) != set(SPLITS):
            raise self.error(f"SPLITS={self.values['SPLITS']!r} must name train, valid and test")
        return splits, tests

    def choice(self, key: str, allowed) -> str:
        if self.get(key) not in allowed:
            raise self.error(f"{key}={self.values[key]!r}: expected one of {', '.join(allowed)}")
        return self.values[key]

    def bpe(self, name: str) -> BpeSetting:
        key = name.upper()
        return BpeSetting(
            self.flag(f"{key}_JOINT"),
            self.number(f"{key}_SRC_MERGES", minimum=1),
            self.number(f"{key}_TGT_MERGES", minimum=1),
        )


def _data_root(path) -> Path:
    """The folder a relative ``DATA`` is taken from: the one above the config's folder (``configs/..``).

    For the shipped configs that is the folder holding the ``mdn_fairseq`` package (the repository root
    of a checkout), also when they are read through the top-level ``configs`` link.
    """
    here = Path(os.path.abspath(str(path))).parent
    shipped = shipped_configs()
    if isinstance(shipped, Path) and here.resolve() == shipped.resolve():
        return shipped.resolve().parents[1]
    return here.parent


def load_config(path) -> TaskConfig:
    """Read and check a task config (a file path, or a shipped one from :func:`config_path_for_task`).

    Returns a :class:`TaskConfig`; a missing file, a malformed line, a missing key or a bad value raises
    :class:`PrepareError` naming the file and the key.
    """
    path = as_resource(path)
    if not path.is_file():
        raise PrepareError(
            f"--config {path}: no such file (the shipped tasks, for --task NAME: {', '.join(known_tasks())})"
        )
    v = _Values(path, read_config(path))
    cfg = TaskConfig(path=path, task=v.values.get("TASK") or path.name.rsplit(".", 1)[0], src="", tgt="")
    cfg.src, cfg.tgt = v.language("SRC"), v.language("TGT")
    if cfg.src == cfg.tgt:
        raise v.error(f"SRC and TGT are both {cfg.src!r}")
    if v.values.get("DATA"):
        data = Path(v.values["DATA"])
        cfg.data = data if data.is_absolute() else (_data_root(path) / data).resolve()
    cfg.splits, cfg.test_sets = v.splits()
    cfg.download = v.choice("DOWNLOAD", DOWNLOADS)
    cfg.bpe = {name: v.bpe(name) for name in BPE_SETTINGS}
    cfg.max_len = v.number("MAX_LEN", minimum=1)
    cfg.max_ratio = v.number("MAX_RATIO", float, minimum=1)
    cfg.quick_train_lines = v.number("QUICK_TRAIN_LINES", minimum=1)
    cfg.quick_src_merges = v.number("QUICK_SRC_MERGES", minimum=1)
    cfg.quick_tgt_merges = v.number("QUICK_TGT_MERGES", minimum=1)
    for line in _read_text(path).splitlines():  # the header comment: what the data looks like
        if not line.lstrip().startswith("#"):
            break
        cfg.comments.append(line)
    return cfg
