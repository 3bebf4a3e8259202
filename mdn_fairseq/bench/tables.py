"""The benchmark's outputs made from its records (:func:`~.measure.row_records`): the speed table in the
layout of the paper's Table 4, the roofline table (arithmetic against the measured peak), the profile
table (Table 1) and the gap split, the latency table, the one-line setting, and for a sweep its table,
CSV and plot (Fig. 3).  Files are written atomically (:mod:`mdn_fairseq.files`).
"""

import csv
import logging
import os
import statistics
from typing import Dict, List, Optional, Sequence

from ..files import atomic_write
from .profile import REGIONS

SWEEP_LABELS = {
    "batch": "batch size (sentences)",
    "beam": "beam size",
    "bpe": "target vocabulary size",
    "srclen": "source length (tokens)",
}


def _fmt(stats: Dict) -> str:
    return f"{stats['median']:.1f} ({stats['min']:.1f}–{stats['max']:.1f})"


def speed_table(records: List[Dict]) -> str:
    """Markdown: per row, parameters (millions), sentences/s and tokens/s (median, min–max), the speedup
    over the first row and the peak memory (MiB, ``n/a`` where not measured); a BLEU column when the
    records have one (``--reference``)."""
    bleu = any("bleu" in r for r in records)
    head = "| model | #params | sent/s | tok/s | speedup | peak mem (MiB) |" + (" BLEU |" if bleu else "")
    lines = [head, "|---" * (7 if bleu else 6) + "|"]
    for r in records:
        up = r["speedup"]
        mem = "n/a" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.1f}"
        lines.append(
            f"| {r['row']} | {r['params'] / 1e6:.1f}M | {_fmt(r['sent_per_s'])} | {_fmt(r['tok_per_s'])} | "
            f"{up['median']:.2f}× ({up['min']:.2f}–{up['max']:.2f}) | {mem} |" + (f" {r['bleu']:.2f} |" if bleu else "")
        )
    return "\n".join(lines)


def _peak_text(v: Dict) -> str:
    others = [f"{m} {r:.1f}" for m, r in v.get("by_method", {}).items() if not v["method"].startswith(m)]
    return f"{v['gflop_per_s']:.1f} GFLOP/s ({v['method']}" + (f"; {', '.join(others)} GFLOP/s" if others else "") + ")"


def peaks_line(peaks: Dict[str, Optional[Dict]]) -> str:
    """One line: the measured peak of each precision (GFLOP/s) and how it was measured."""
    parts = [
        f"{p} not measured (no such product on this device)" if v is None else f"{p} {_peak_text(v)}"
        for p, v in peaks.items()
    ]
    return "Machine peak, same threads: " + "; ".join(parts) + "."


def _ms(seconds: Optional[float], batches: int) -> str:
    return "n/a" if seconds is None else f"{1000 * seconds / batches:.1f}"


def roofline_table(records: List[Dict], batches: int) -> str:
    """Markdown: per row its precision, arithmetic per pass (GFLOP, 2 per multiply-add), achieved GFLOP/s
    (median, min–max), share of the precision's peak, the sentences/s it would reach at peak, and ms per
    batch at peak (its arithmetic limit), measured, and the gap between them (share of the measured time)."""
    lines = [
        "| model | precision | GFLOP/pass | GFLOP/s | % of peak | sent/s at peak | "
        "ms/batch at peak | ms/batch measured | gap ms/batch (% of measured) |",
        "|---" * 9 + "|",
    ]
    for r in records:
        measured = r["sent_per_s"]["median"]
        measured_s = r["sentences"] / measured
        if r["limit_s"] is None:
            pct = at_peak = gap = "n/a"
        else:
            pct = f"{r['pct_of_peak']:.1f}%"
            at_peak = f"{r['sentences'] / r['limit_s']:.1f}"
            gap = f"{_ms(r['gap_s'], batches)} ({100 * r['gap_s'] / measured_s:.0f}%)"
        lines.append(
            f"| {r['row']} | {r['precision']} | {r['flops'] / 1e9:.3f} | {_fmt(r['gflop_per_s'])} | {pct} | "
            f"{at_peak} | {_ms(r['limit_s'], batches)} | {_ms(measured_s, batches)} | {gap} |"
        )
    return "\n".join(lines)


GAP_HEADING = (
    "Where the gap goes (from the profile, ms per batch): each module group's share of peak, and the gap "
    "split into matrix products below peak (the groups' time minus their time at peak) and overhead "
    "outside them (the profile's other: beam search, softmax, norms, Python; no counted arithmetic):"
)


def gap_table(records: List[Dict], batches: int) -> str:
    """Markdown (rows with a profile and a peak): per module group the share of peak (``–`` without
    FLOPs), then the gap split in ms per batch: products below peak and overhead (share of the gap)."""
    groups = [g for g in REGIONS]
    lines = [
        "| model | " + " | ".join(f"{g} % of peak" for g in groups) + " | gap: products | gap: overhead |",
        "|---" * (len(groups) + 3) + "|",
    ]
    for r in records:
        if r.get("profile_s") is None or "gap_products_s" not in r:
            continue
        pct = r["pct_of_peak_by_group"]
        cells = ["–" if pct[g] is None else f"{pct[g]:.0f}%" for g in groups]
        gap = r["gap_products_s"] + r["gap_overhead_s"]
        split = [
            f"{_ms(r[k], batches)} ({100 * r[k] / gap:.0f}%)" if gap > 0 else _ms(r[k], batches)
            for k in ("gap_products_s", "gap_overhead_s")
        ]
        lines.append(f"| {r['row']} | " + " | ".join(cells + split) + " |")
    return "\n".join(lines)


def latency_table(records: List[Dict]) -> str:
    """Markdown: per row the p50, p95 and mean milliseconds per sentence at batch size 1."""
    lines = ["| model | p50 ms | p95 ms | mean ms |", "|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['row']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['mean_ms']:.1f} |")
    return "\n".join(lines)


FLOOR_HEADING = (
    "Kernel floor (ms per batch; fp32 CPU rows only): the row's matrix products (`_linear_pointwise`: oneDNN, "
    "its weight packed; `addmm`/`mm`/`bmm`: torch's BLAS), fused attention and log_softmax, each call re-timed "
    "alone at its recorded shapes (best of 5, warm cache), summed; everything else (norms, adds, indexing, "
    "top-k, beam bookkeeping, Python) counted as free. *% of peak at the floor*: the most this row's "
    "arithmetic could reach with these kernels; calls are per pass over all batches:"
)


def floor_table(records: List[Dict], batches: int) -> str:
    """Markdown (rows with a kernel floor): measured and floor ms per batch, the share of peak measured and
    at the floor, measured over floor, and the floor per kernel."""
    lines = [
        "| model | ms/batch measured | ms/batch floor | % of peak measured | % of peak at the floor "
        "| measured / floor | floor by kernel (ms/batch, calls per pass) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        f = r.get("floor")
        if f is None:
            continue
        measured = statistics.median(r["seconds"])
        parts = ", ".join(
            f"{name.split('::')[-1]} {1000 * s / batches:.1f} ({f['kernel_calls'][name]} calls)"
            for name, s in sorted(f["floor_by_kernel_s"].items(), key=lambda kv: -kv[1])
        )
        pct = "–" if r["pct_of_peak"] is None else f"{r['pct_of_peak']:.1f}%"
        floor_pct = "–" if r["floor_pct_of_peak"] is None else f"{r['floor_pct_of_peak']:.1f}%"
        ratio = f"{measured / f['floor_s']:.2f}" if f["floor_s"] > 0 else "–"
        lines.append(
            f"| {r['row']} | {1000 * measured / batches:.1f} | {1000 * f['floor_s'] / batches:.1f} | {pct} "
            f"| {floor_pct} | {ratio} | {parts} |"
        )
    return "\n".join(lines)


def profile_table(records: List[Dict], batches: int) -> str:
    """Markdown: per row, milliseconds per batch in each region and in the rest (share of the total in
    %), and the total; ``batches`` is the number of batches of one pass."""
    cols = list(REGIONS) + ["other", "total"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in records:
        p = r["profile_s"]
        if p is None:  # an engine's row (CTranslate2): no module hooks
            continue
        cells = [f"{1000 * p[c] / batches:.1f} ({100 * p[c] / p['total']:.0f}%)" for c in cols[:-1]]
        lines.append(f"| {r['row']} | " + " | ".join(cells) + f" | {1000 * p['total'] / batches:.1f} |")
    return "\n".join(lines)


def setting_line(s: Dict) -> str:
    """One line of the setting (hardware, device, threads, batch, beam, lengths, sentences, repeats, torch)."""
    length = f"output length {s['out_len']} (fixed)" if s["out_len"] else "natural output length"
    dev = f"{s['device']}{' fp16' if s['fp16'] else ''}"
    return (
        f"{s['hardware']}; {dev}, {s['threads']} threads; batch {s['batch']}, beam {s['beam']}, {length}; "
        f"{s['sentences']} sentences, {s['repeats']} repeats after {s['warmup']} warm-up batch(es); "
        f"torch {s['torch']}"
    )


def sweep_points(value: int, records: List[Dict]) -> List[Dict]:
    """The sweep's points at ``value``: per row its parameters, medians, FLOPs per pass, achieved GFLOP/s,
    share of peak and profile."""
    return [
        {
            "value": value,
            "row": r["row"],
            "params": r["params"],
            "sent_per_s": r["sent_per_s"]["median"],
            "tok_per_s": r["tok_per_s"]["median"],
            "speedup": r["speedup"]["median"],
            "flops": r["flops"],
            "gflop_per_s": r["gflop_per_s"]["median"],
            "pct_of_peak": r["pct_of_peak"],
            "profile_s": r["profile_s"],
        }
        for r in records
    ]


def sweep_table(points: List[Dict], kind: str, values: Sequence[int]) -> str:
    """Markdown: a row per benchmark row, a column per swept value: sent/s (speedup over the first row)."""
    lines = ["| model | " + " | ".join(f"{kind} {v}" for v in values) + " |", "|---" * (len(values) + 1) + "|"]
    for name in dict.fromkeys(p["row"] for p in points):
        cells = [
            next(
                (
                    f"{p['sent_per_s']:.1f} ({p['speedup']:.2f}×)"
                    for p in points
                    if p["row"] == name and p["value"] == v
                ),
                "–",
            )
            for v in values
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_sweep_csv(points: List[Dict], kind: str, path: str) -> None:
    """CSV with the columns ``KIND, row, params, sent_per_s, tok_per_s, speedup, gflop_per_s,
    pct_of_peak`` (empty where no peak was measured), one line per point."""
    with atomic_write(path) as f:
        w = csv.writer(f)
        w.writerow([kind, "row", "params", "sent_per_s", "tok_per_s", "speedup", "gflop_per_s", "pct_of_peak"])
        for p in points:
            w.writerow(
                [
                    p["value"],
                    p["row"],
                    p["params"],
                    f"{p['sent_per_s']:.3f}",
                    f"{p['tok_per_s']:.3f}",
                    f"{p['speedup']:.4f}",
                    f"{p['gflop_per_s']:.3f}",
                    "" if p["pct_of_peak"] is None else f"{p['pct_of_peak']:.2f}",
                ]
            )


def plot_sweep(points: List[Dict], kind: str, path: str) -> None:
    """Speedup over the first row (left) and sentences/s (right, log scale; for ``srclen`` milliseconds per
    sentence, how time grows with the length) against the swept value (log-2 axis), a line per row; the
    image format follows ``path``'s extension (PNG by default)."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # before its import, which logs at DEBUG
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(dict.fromkeys(p["row"] for p in points))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in names:
        pts = [p for p in points if p["row"] == name]
        xs = [p["value"] for p in pts]
        ax1.plot(xs, [p["speedup"] for p in pts], marker="o", label=name)
        ys = [1000 / p["sent_per_s"] if kind == "srclen" else p["sent_per_s"] for p in pts]
        ax2.plot(xs, ys, marker="o", label=name)
    values = sorted({p["value"] for p in points})
    right = "ms per sentence" if kind == "srclen" else "sentences/s"
    for ax, ylabel in ((ax1, f"speedup over {names[0]}"), (ax2, right)):
        ax.set_xscale("log", base=2)
        ax.set_xticks(values, [str(v) for v in values])
        ax.minorticks_off()
        ax.set_xlabel(SWEEP_LABELS[kind])
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax2.set_yscale("log")
    ax2.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax2.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax2.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format=fmt, dpi=120)
    finally:
        plt.close(fig)
