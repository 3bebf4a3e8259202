"""Tokenisation and BPE, line by line, and the worker processes that run them over a corpus.

The tokeniser settings of every prepared corpus are :data:`MOSES_OPTIONS` and :data:`JIEBA_LANGS`
(:func:`tokenizer_settings` gives them per language): what translates a model's input the same way
must use them.  sacremoses, subword-nmt and jieba are imported when first needed.
"""

import logging
import multiprocessing
import os
from itertools import islice
from typing import Dict, Iterable, Iterator, Tuple

from .config import PrepareError

CHUNK_LINES = 2000  # lines per job sent to a worker process

MOSES_OPTIONS = {"escape": False, "aggressive_dash_splits": False}
"""The keyword options of sacremoses' ``MosesTokenizer.tokenize`` for every language: no XML escaping
(``&`` stays ``&``), no aggressive dash splitting (``stop-gaps`` stays one token)."""

JIEBA_LANGS = ("zh",)
"""Languages segmented into words with jieba before Moses tokenisation."""

BPE_SEPARATOR = "@@"  # subword-nmt's continuation marker (fairseq's --bpe subword_nmt default)


def tokenizer_settings(lang: str) -> Dict:
    """How text in ``lang`` is tokenised before BPE: ``{"tokenizer": "moses", "lang": lang, "escape": False,
    "aggressive_dash_splits": False, "segmenter": "jieba" | None}``."""
    return {"tokenizer": "moses", "lang": lang, **MOSES_OPTIONS, "segmenter": "jieba" if lang in JIEBA_LANGS else None}


def tokenizer_description(lang: str) -> str:
    """:func:`tokenizer_settings` in one line, as recorded in ``prepare.json``'s settings (its fingerprint),
    e.g. ``"sacremoses escape=False aggressive_dash_splits=False after jieba"``."""
    options = " ".join(f"{k}={v}" for k, v in MOSES_OPTIONS.items())
    return f"sacremoses {options}" + (" after jieba" if lang in JIEBA_LANGS else "")


def load_jieba():
    """Import and initialise jieba quietly (once, before worker processes fork); raises
    :class:`PrepareError` with the install command when it is missing."""
    try:
        import jieba
    except ImportError:
        raise PrepareError("Chinese needs jieba: pip install jieba") from None
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def segment_chinese(line: str) -> str:
    """Chinese word segmentation with jieba, whitespace collapsed to single spaces."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return " ".join(" ".join(jieba.cut(line)).split())


_TOKENIZERS = {}
_BPE_MODELS = {}


def tokenize_line(line: str, lang: str) -> str:
    """One line Moses-tokenised with :data:`MOSES_OPTIONS` (sacremoses); :data:`JIEBA_LANGS` are
    jieba-segmented first.  Returns the tokens joined by single spaces."""
    if lang not in _TOKENIZERS:
        from sacremoses import MosesTokenizer

        _TOKENIZERS[lang] = MosesTokenizer(lang=lang)
    if lang in JIEBA_LANGS:
        line = segment_chinese(line)
    return _TOKENIZERS[lang].tokenize(line, return_str=True, **MOSES_OPTIONS)


def bpe_model(codes):
    """The subword-nmt BPE model of the codes file ``codes`` (cached per file version)."""
    st = os.stat(codes)
    key = (os.path.abspath(codes), st.st_mtime_ns, st.st_size)
    if key not in _BPE_MODELS:
        from subword_nmt.apply_bpe import BPE

        with open(codes, encoding="utf-8") as f:
            _BPE_MODELS[key] = BPE(f, separator=BPE_SEPARATOR)
    return _BPE_MODELS[key]


def _work(job):
    """Process one chunk of ``(src, tgt)`` pairs in a worker: ``("tok", (src_lang, tgt_lang), pairs)``
    or ``("bpe", (src_codes, tgt_codes), pairs)``."""
    kind, (a, b), pairs = job
    if kind == "tok":
        return [(tokenize_line(s, a), tokenize_line(t, b)) for s, t in pairs]
    bs, bt = bpe_model(a), bpe_model(b)
    return [(bs.process_line(s), bt.process_line(t)) for s, t in pairs]


class ChunkMapper:
    """Tokenises or applies BPE to a stream of pairs in chunks, in order, on ``workers`` processes.

    The pool is started on first need (small inputs stay in this process) and is fed a bounded window
    of chunks at a time, so memory does not grow with the corpus.  Use it as a context manager (or call
    :meth:`close`) to stop the pool.
    """

    def __init__(self, workers: int, chunk_lines: int = CHUNK_LINES):
        self.workers, self.chunk_lines, self.pool = max(1, workers), chunk_lines, None

    def map(self, kind: str, args: Tuple[str, str], pairs: Iterable) -> Iterator[Tuple[str, str]]:
        """``kind`` ``"tok"`` with ``args`` = (src_lang, tgt_lang), or ``"bpe"`` with ``args`` = (src_codes,
        tgt_codes): yields the processed ``(src, tgt)`` pairs in input order."""
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
        """Stop the worker processes (if any were started)."""
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
