"""Reading and checking parallel text: line-aligned files (plain or gzip), UTF-8 checks, empty pairs and
the training-pair length filter.  Pure functions over lines; no torch, no fairseq."""

import gzip
import os
import zlib
from contextlib import ExitStack
from typing import Iterator, List, Optional, Sequence, Tuple

from .config import PrepareError

LENGTH_VERDICTS = ("too_short", "too_long", "bad_ratio")

# Characters that Python's text readers (fairseq, sacreBLEU) or str.splitlines() take as line breaks:
# inside a line they would shift every following line, so the raw text gets a space instead.
_LINE_BREAKS = str.maketrans({c: " " for c in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


def open_binary(path):
    """``path`` opened for binary reading; a ``.gz`` name is read through gzip."""
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def decode_line(raw: bytes, path, lineno: int) -> str:
    """Line ``lineno`` (1-based) of ``path`` (bytes, newline included or not) as text, without its line
    end (and without a UTF-8 byte-order mark on line 1); bad UTF-8 raises :class:`PrepareError` naming the
    file, line and byte, and how to re-encode the file."""
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PrepareError(
            f"{path}: line {lineno}: invalid UTF-8 at byte {e.start} of the line ({e.reason}): re-encode the "
            f"file as UTF-8, e.g. iconv -f LATIN1 -t UTF-8 FILE > FILE.utf8 (zcat/gzip around it for .gz)"
        ) from None
    return text[1:] if lineno == 1 and text.startswith("\ufeff") else text


def _lines(f, path):
    """The raw lines of an open binary file; a damaged file raises :class:`PrepareError`."""
    try:
        yield from f
    except (OSError, EOFError, zlib.error) as e:
        raise PrepareError(f"{path}: cannot read ({e}): the file is damaged or truncated") from e


def read_parallel(paths: Sequence, limit: Optional[int] = None) -> Iterator[Tuple[int, Tuple[str, ...]]]:
    """Yield ``(lineno, (line_0, line_1, ...))`` from line-aligned files (plain or ``.gz``), 1-based.

    Stops after ``limit`` lines when given.  An unreadable file, invalid UTF-8 and files of different
    lengths raise :class:`PrepareError` (naming the file and line, or every file and its line count).
    """
    paths = [str(p) for p in paths]
    with ExitStack() as stack:
        its = []
        for p in paths:
            try:
                its.append(_lines(stack.enter_context(open_binary(p)), p))
            except OSError as e:
                raise PrepareError(f"cannot open {p}: {e}") from e
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


def is_blank(text: str) -> bool:
    """True for an empty or whitespace-only line."""
    return not text.strip()


def drop_empty(rows, columns: Optional[Sequence[int]] = None) -> Tuple[List[tuple], int]:
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


def clean_line(text: str) -> str:
    """A raw line as written to ``raw/``: stray line-break characters as spaces, outer whitespace stripped."""
    return text.translate(_LINE_BREAKS).strip()


def length_verdict(src: str, tgt: str, max_len: int, max_ratio: float, words=None) -> Optional[str]:
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


def length_filter(pairs, max_len: int, max_ratio: float, word_pairs=None):
    """Filter ``(src, tgt)`` subword pairs with :func:`length_verdict` (ratio on ``word_pairs``, the same
    pairs before BPE, when given).

    Returns ``(kept_pairs, stats)``, stats counting ``too_short``, ``too_long`` and ``bad_ratio``.
    """
    kept, stats = [], dict.fromkeys(LENGTH_VERDICTS, 0)
    for i, (src, tgt) in enumerate(pairs):
        why = length_verdict(src, tgt, max_len, max_ratio, None if word_pairs is None else word_pairs[i])
        if why is None:
            kept.append((src, tgt))
        else:
            stats[why] += 1
    return kept, stats


def count_lines(path) -> int:
    """The number of lines of a (plain) file."""
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def nonempty(path) -> bool:
    """True when ``path`` is a file with at least one byte."""
    return os.path.isfile(path) and os.path.getsize(path) > 0


def copy_lines(src_path, out) -> int:
    """Append ``src_path`` (plain or ``.gz``) to the binary file ``out``, adding a final newline when it has
    none; returns its number of lines."""
    n, last = 0, b"\n"
    with open_binary(src_path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
            last = block[-1:]
            out.write(block)
    if last != b"\n":
        out.write(b"\n")
        n += 1
    return n
