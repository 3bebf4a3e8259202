"""Each row against the machine's limit: its arithmetic (:mod:`.flops`) over the measured peak.

The peak of a precision is measured in the same run, with the same threads: the best rate of a large
square matrix product (``--peak-size``, 2048 by default) over a few calls -- fp32 and bf16/fp16 with
``torch.matmul``, int8 with torch's dynamic-quantized linear (fbgemm on x86, the kernel of the
``--int8`` rows; ``torch._int_mm`` is no faster than fp32 on CPU).  In fp32 on CPU also with oneDNN's
linear (the lean search's, :mod:`mdn_fairseq.fast_generator.linear`), on the plain and on the packed
weight, and the peak is the fastest of the three: on AMD CPUs ``torch.matmul`` (MKL) reaches well under
half of what oneDNN does, and a limit taken from it alone would not be the machine's; oneDNN on a packed
weight (what the lean search runs) is another 2-5% faster at 2048^3 on the machine of the README.  A row's *limit* is the time its
FLOPs take at that peak; the *gap* is its measured time minus the limit.  With ``--profile`` the gap
is split into the matrix products running below peak (per group: profiled time minus the group's
limit) and the overhead outside them (the profile's ``other``: beam search, softmax, norms, Python),
which holds no counted arithmetic.
"""

import statistics
import warnings
from typing import Dict, Iterable, List, Optional

import torch
from torch import nn

from ..fast_generator.linear import PackedWeights, linear, onednn_unavailable_reason
from .flops import GROUPS, count_flops
from .measure import Row, best_seconds

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _int8_product(size: int):
    """A ``size``×``size`` int8 dynamic-quantized linear and its input (the ``--int8`` rows' kernel)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        layer = torch.ao.quantization.quantize_dynamic(
            nn.Sequential(nn.Linear(size, size, bias=False)), {nn.Linear}, dtype=torch.qint8
        )
    x = torch.randn(size, size)
    return lambda: layer(x)


def measure_peak(precision: str, device: str, size: int = 2048, calls: int = 5) -> Optional[Dict]:
    """The best rate (GFLOP/s, 2 FLOPs per multiply-add) of ``calls`` ``size``×``size``×``size``
    products in ``precision`` (``fp32``, ``bf16``, ``fp16``, ``int8``) on ``device``, after one warm-up
    call; uses the current ``torch.get_num_threads()``.  None where the precision has no product to time
    there (int8 on CUDA).  fp32 on CPU: the fastest of ``torch.matmul`` and oneDNN's linear on the plain
    and on the packed weight.  Returns
    ``{"precision", "gflop_per_s", "size", "method", "by_method": {method: GFLOP/s}}``."""
    products = {}
    if precision == "int8":
        if device != "cpu":
            return None
        products["torch dynamic-quantized linear (int8 weights and activations)"] = _int8_product(size)
    else:
        a = torch.randn(size, size, device=device).to(DTYPES[precision])
        b = torch.randn(size, size, device=device).to(DTYPES[precision])
        products[f"torch.matmul, {precision}"] = lambda: torch.matmul(a, b)
        if precision == "fp32" and device == "cpu" and onednn_unavailable_reason() is None:
            products["oneDNN linear, fp32"] = lambda: linear(a, b)
            packed = PackedWeights().get(b)  # as the lean search computes (see its .linear)
            products["oneDNN linear, fp32, packed weight"] = lambda: linear(a, b, packed=packed)
    rates = {method: 2 * size**3 / best_seconds(product, calls, device) / 1e9 for method, product in products.items()}
    method = max(rates, key=rates.get)
    return {
        "precision": precision,
        "gflop_per_s": rates[method],
        "size": size,
        "method": f"{method}, {size}^3, best of {calls}",
        "by_method": rates,
    }


def measure_peaks(precisions: Iterable[str], device: str, size: int = 2048) -> Dict[str, Optional[Dict]]:
    """:func:`measure_peak` of each distinct precision (in the order first seen)."""
    return {p: measure_peak(p, device, size) for p in dict.fromkeys(precisions)}


def row_flops(row: Row, beam: int) -> Dict[str, int]:
    """FLOPs per pass of ``row`` by group: its sentences' source lengths (EOS included) and, as decoder
    steps, the length of each sentence's best hypothesis (EOS included; with ``--out-len`` every
    hypothesis has it; with natural lengths an estimate: a search may run on for other hypotheses)."""
    src, tgt = [], []
    for sample in row.batches:
        lengths = sample["net_input"]["src_lengths"].tolist()
        for i, s in zip(sample["id"].tolist(), lengths):
            src.append(s)
            tgt.append(len(row.hypotheses[i]))
    return count_flops(row.model.model, src, tgt, beam)


def _split_gap(profile: Dict[str, float], flops: Dict[str, int], peak: float) -> Dict:
    """Per profiled group its share of peak (None without FLOPs), and the gap split in seconds per pass:
    ``products`` (groups below peak) and ``overhead`` (``other``)."""
    limit = {g: flops[g] / (peak * 1e9) for g in GROUPS}
    groups = [g for g in GROUPS if g != "other"]
    pct = {g: (100 * limit[g] / profile[g] if profile[g] > 0 and flops[g] else None) for g in groups}
    return {
        "pct_of_peak_by_group": pct,
        "gap_products_s": sum(profile[g] - limit[g] for g in groups),
        "gap_overhead_s": profile["other"] - limit["other"],
    }


def roofline_record(row: Row, beam: int, precision: str, peak: Optional[Dict]) -> Dict:
    """The roofline fields of ``row``'s record: ``precision``, ``flops`` (per pass) and
    ``flops_by_group``, ``gflop_per_s`` (median, min, max over repeats), ``peak_gflop_per_s``,
    ``pct_of_peak`` (of the median), ``limit_s`` and ``gap_s`` (seconds per pass at peak, measured median
    minus that), ``floor_pct_of_peak`` (the share of peak at the kernel floor, :mod:`.floor`, or None) and,
    with a profile, the gap split (:func:`_split_gap`).  Peak-relative fields are None
    where no peak was measured for the precision."""
    flops = row_flops(row, beam)
    total = sum(flops.values())
    rates = [total / s / 1e9 for s in row.seconds]
    median_s = statistics.median(row.seconds)
    rec = {
        "precision": precision,
        "flops": total,
        "flops_by_group": flops,
        "gflop_per_s": {"median": total / median_s / 1e9, "min": min(rates), "max": max(rates)},
        "peak_gflop_per_s": None,
        "pct_of_peak": None,
        "limit_s": None,
        "gap_s": None,
        "floor_pct_of_peak": None,
    }
    if peak is None:
        return rec
    rate = peak["gflop_per_s"]
    rec.update(
        peak_gflop_per_s=rate,
        pct_of_peak=100 * rec["gflop_per_s"]["median"] / rate,
        limit_s=total / (rate * 1e9),
        gap_s=median_s - total / (rate * 1e9),
    )
    if row.profile is not None:
        rec.update(_split_gap(row.profile, flops, rate))
    if row.floor is not None and row.floor["floor_s"] > 0:
        rec["floor_pct_of_peak"] = 100 * total / row.floor["floor_s"] / (rate * 1e9)
    return rec


def add_roofline(
    records: List[Dict], rows: List[Row], beam: int, peaks: Dict[str, Optional[Dict]], fp16: bool = False
) -> None:
    """Add :func:`roofline_record`'s fields to each record (``records[i]`` is ``rows[i]``'s; its precision
    from :meth:`~.models.Model.precision`, ``fp16`` in a ``--fp16`` run), in place."""
    for rec, row in zip(records, rows):
        precision = row.model.precision(fp16)
        rec.update(roofline_record(row, beam, precision, peaks.get(precision)))
