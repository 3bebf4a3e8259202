"""Atomic file writes: a path holds either its old content or the complete new one, never half of it.

Every file mdn-fairseq writes for a user (checkpoints, reports, benchmark tables, prepared data) goes
through :func:`atomic_write`: the content is written to a temporary file in the same folder and renamed
over ``path`` only when the ``with`` block ends without an exception (the temporary file is removed
otherwise).  No torch import: :func:`save_torch` imports it when called.
"""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterable, Iterator


@contextmanager
def atomic_write(path, mode: str = "w", encoding: str = "utf-8") -> Iterator:
    """Open a temporary file next to ``path`` for writing (``mode`` ``"w"`` or ``"wb"``); on a clean
    exit it replaces ``path`` (folders are created), on an exception it is deleted and ``path`` is
    left as it was.  Text is written with ``\\n`` line ends."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode {mode!r} is not 'w' or 'wb'")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600; give the file what open() would
        if mode == "wb":
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding, newline="\n")
        with f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_folder(path) -> Iterator[str]:
    """A fresh folder ``path.tmp`` to fill (its path is yielded); on a clean exit it replaces ``path`` (an
    old ``path`` is removed first), on an exception it is deleted and ``path`` is left as it was."""
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _default_mode() -> int:
    """0666 less the process umask: the mode ``open(path, "w")`` gives a new file.  The umask is read
    from /proc where there is one (setting it to read it would race with other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o22)
        os.umask(umask)
    return 0o666 & ~umask


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path) as f:
        f.write(text)


def write_lines(path, lines: Iterable[str]) -> None:
    """Write ``lines`` (without line ends) to ``path`` atomically, one per line."""
    with atomic_write(path) as f:
        for line in lines:
            f.write(line + "\n")


def write_json(path, obj, keep_unchanged: bool = False) -> None:
    """Write ``obj`` as indented UTF-8 JSON atomically; with ``keep_unchanged`` an identical file is
    left alone (its mtime too, for stages judged by mtime)."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    if keep_unchanged and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    write_text(path, text)


def save_torch(obj, path) -> None:
    """``torch.save(obj, path)`` atomically."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
