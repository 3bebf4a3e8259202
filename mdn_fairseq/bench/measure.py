"""Timing rows side by side, and their peak memory.

A :class:`Row` is one line of the table: a model with a generator (an object with fairseq's
``generate(models, sample)``), and the batches it translates.  :func:`time_rows` runs every row over
all its batches ``repeats`` times, the rows rotating (each repeat starts one row later) so that drift
in the machine's speed hits all rows alike; :func:`row_stats` turns the seconds into sentences/s,
tokens/s and the speedup over the first row, repeat by repeat.
"""

import contextlib
import ctypes
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, List, Optional

import torch
from fairseq.sequence_generator import SequenceGenerator
from torch import nn

from ..errors import MDNError
from ..fast_generator import FastSequenceGenerator
from .models import Model

# --generator NAME -> the class, built as SequenceGenerator([model], tgt_dict, beam_size=..., <lengths>);
# fast_torch: the lean search with torch's own F.linear (MKL on x86) instead of oneDNN (fast_generator.linear)
GENERATORS: Dict[str, Callable[..., nn.Module]] = {
    "fairseq": SequenceGenerator,
    "fast": FastSequenceGenerator,
    "fast_torch": partial(FastSequenceGenerator, linear_backend="torch"),
}


@dataclass
class Row:
    """One line of the table: ``model`` translated by ``generator`` (kind ``generator_kind``) over
    ``batches``; filled in by the measurement: wall seconds per repeat, sentences and best-hypothesis
    tokens per pass, peak memory (MiB), the per-module profile (seconds, see :mod:`.profile`), the kernel
    floor (see :mod:`.floor`) and the
    best hypothesis of each sentence (its id -> tokens, EOS included) of the last pass; ``device`` is
    where the batches are (for the model's autocast context)."""

    model: Model
    generator_kind: str
    generator: nn.Module
    batches: List[Dict]
    seconds: List[float] = field(default_factory=list)
    sentences: int = 0
    tokens: int = 0
    peak_mem_mib: Optional[float] = None
    profile: Optional[Dict[str, float]] = None
    floor: Optional[Dict] = None
    hypotheses: Dict[int, torch.Tensor] = field(default_factory=dict)
    device: str = "cpu"

    @property
    def name(self) -> str:
        """``model · generator`` (``· variant`` appended for int8 and other variants)."""
        return f"{self.model.name} · {self.generator_kind}" + (f" · {self.model.variant}" if self.model.variant else "")


def build_generator(
    kind: str, model: Model, beam: int, out_len: Optional[int], max_len_a: float = 0, max_len_b: int = 200
) -> nn.Module:
    """The generator ``kind`` (a key of :data:`GENERATORS`) for ``model``, beam ``beam``.  With
    ``out_len`` every hypothesis has exactly ``out_len`` tokens before EOS (EOS masked until then, then
    forced); otherwise the length limit is ``max_len_a * src_len + max_len_b``, as in fairseq-generate."""
    if kind not in GENERATORS:
        raise MDNError(f"--generator {kind}: unknown; choose from {', '.join(GENERATORS)}")
    if out_len is not None:
        lengths = dict(min_len=out_len, max_len_a=0, max_len_b=out_len)
    else:
        lengths = dict(max_len_a=max_len_a, max_len_b=max_len_b)
    return GENERATORS[kind]([model.model], model.tgt_dict, beam_size=beam, **lengths)


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device == "cuda":
        torch.cuda.synchronize()


def best_seconds(kernel: Callable[[], object], calls: int = 5, device: str = "cpu") -> float:
    """The fastest of ``calls`` runs of ``kernel`` (seconds, the device's queued work included), after
    one warm-up run, without autograd."""
    with torch.no_grad():
        kernel()
        seconds = []
        for _ in range(calls):
            sync(device)
            start = time.perf_counter()
            kernel()
            sync(device)
            seconds.append(time.perf_counter() - start)
    return min(seconds)


def _status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _reset_peak_rss() -> bool:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the next peak is this block's
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a ``with`` block in MiB (``.mib``; ``None`` where it cannot be measured): CUDA's
    ``max_memory_allocated``, or on CPU the rise of the process's peak RSS (``VmHWM``, reset through
    ``/proc/self/clear_refs``) over its RSS at the start, so the model weights are not counted."""

    def __init__(self, device: str):
        self.device = device
        self.method = (
            "torch.cuda.max_memory_allocated"
            if device == "cuda"
            else "rise of the peak RSS over the RSS before the pass (malloc_trim, then VmHWM reset "
            "through /proc/self/clear_refs); model weights excluded"
        )
        self.mib: Optional[float] = None
        self.start: Optional[int] = None

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.start = 0
        else:
            self.start = _status_kib("VmRSS") if _reset_peak_rss() else None
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            self.mib = torch.cuda.max_memory_allocated() / 2**20
        elif self.start is not None:
            peak = _status_kib("VmHWM")
            self.mib = None if peak is None else max(0, peak - self.start) / 1024
        return False


def translate_batch(row: Row, sample: Dict) -> List[List[Dict]]:
    """``row.generator.generate`` on one batch, in the model's precision context (autocast variants)."""
    with row.model.context(row.device):
        return row.generator.generate([row.model.model], sample)


def translate(row: Row, out_len: Optional[int], batches: Optional[List[Dict]] = None):
    """Translate ``batches`` (default ``row.batches``) with ``row.generator``; returns (sentences, tokens
    of the best hypotheses, EOS included) and keeps each sentence's best hypothesis in ``row.hypotheses``.
    With ``out_len``, raises ``RuntimeError`` if any hypothesis is not ``out_len`` + EOS tokens long (the
    fixed-length setting would be broken)."""
    sentences = tokens = 0
    for sample in row.batches if batches is None else batches:
        hypos = translate_batch(row, sample)
        sentences += len(hypos)
        tokens += sum(len(h[0]["tokens"]) for h in hypos)
        for i, h in zip(sample["id"].tolist(), hypos):
            row.hypotheses[i] = h[0]["tokens"]
        if out_len is not None:
            bad = {len(h["tokens"]) for hs in hypos for h in hs} - {out_len + 1}
            if bad:
                raise RuntimeError(
                    f"{row.name}: hypotheses of {sorted(bad)} tokens, expected --out-len {out_len} "
                    "+ EOS; the fixed-length setting is broken"
                )
    return sentences, tokens


def warm_up(rows: List[Row], batches: int) -> None:
    """Translate the first batch of each row ``batches`` times, untimed (lazy allocations, caches)."""
    with torch.no_grad():
        for row in rows:
            for sample in row.batches[:1] * batches:
                translate_batch(row, sample)


def time_rows(rows: List[Row], repeats: int, warmup: int, out_len: Optional[int], device: str) -> None:
    """:func:`warm_up`, then ``repeats`` timed passes over all batches of every row, rows rotating each
    pass; appends wall seconds to ``row.seconds`` and sets ``sentences``, ``tokens`` and
    ``peak_mem_mib`` (the largest over the passes).  Under ``no_grad``, as ``fairseq-generate`` runs."""
    warm_up(rows, warmup)
    with torch.no_grad():
        for rep in range(repeats):
            for i in range(len(rows)):
                row = rows[(rep + i) % len(rows)]
                with PeakMemory(device) as mem:
                    sync(device)
                    start = time.perf_counter()
                    row.sentences, row.tokens = translate(row, out_len)
                    sync(device)
                    row.seconds.append(time.perf_counter() - start)
                if mem.mib is not None:
                    row.peak_mem_mib = max(row.peak_mem_mib or 0.0, mem.mib)


def spread(values: List[float]) -> Dict:
    """``{"median", "min", "max", "runs"}`` of ``values``."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def row_stats(row: Row, first: Row) -> Dict:
    """Sentences/s and tokens/s over the repeats (:func:`spread`), the speedup over ``first`` repeat by
    repeat (the rows of one repeat run back to back, so their ratio cancels most drift), and the seconds."""
    return {
        "sent_per_s": spread([row.sentences / s for s in row.seconds]),
        "tok_per_s": spread([row.tokens / s for s in row.seconds]),
        "speedup": spread([(row.sentences / s) / (first.sentences / f) for s, f in zip(row.seconds, first.seconds)]),
        "seconds": row.seconds,
    }


def hardware(device: str) -> str:
    """The GPU's name, or the CPU's model name and number of logical CPUs."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        name = m.group(1).strip() if m else platform.processor()
    except OSError:
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} logical CPUs"


def row_records(rows: List[Row]) -> List[Dict]:
    """The results of ``rows`` as JSON-ready records (what ``--out-json`` holds under ``rows`` and what the
    tables are made of): names, parameters, sentences and tokens per pass, :func:`row_stats` over the first
    row, peak memory (MiB or ``None``), the profile (seconds per region or ``None``) and the kernel floor
    (:func:`.floor.kernel_floor`'s dict or ``None``)."""
    return [
        {
            "row": row.name,
            "model": row.model.name,
            "generator": row.generator_kind,
            "int8": row.model.int8,
            "variant": row.model.variant,
            "params": row.model.params,
            "sentences": row.sentences,
            "tokens": row.tokens,
            **row_stats(row, rows[0]),
            "peak_mem_mib": row.peak_mem_mib,
            "profile_s": row.profile,
            "floor": row.floor,
        }
        for row in rows
    ]
