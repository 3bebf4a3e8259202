"""The benchmark's outputs made from its records (:func:`~.measure.row_records`): the speed table in the
layout of the paper's Table 4, the profile table (Table 1), the one-line setting, and for a sweep its
table, CSV and plot (Fig. 3).  Files are written atomically (:mod:`mdn_fairseq.files`).
"""

import csv
import logging
import os
from typing import Dict, List, Sequence

from ..files import atomic_write
from .profile import REGIONS

SWEEP_LABELS = {"batch": "batch size (sentences)", "beam": "beam size", "bpe": "target vocabulary size"}


def _fmt(stats: Dict) -> str:
    return f"{stats['median']:.1f} ({stats['min']:.1f}–{stats['max']:.1f})"


def speed_table(records: List[Dict]) -> str:
    """Markdown: per row, parameters (millions), sentences/s and tokens/s (median, min–max), the speedup
    over the first row and the peak memory (MiB, ``n/a`` where not measured)."""
    lines = ["| model | #params | sent/s | tok/s | speedup | peak mem (MiB) |", "|---|---|---|---|---|---|"]
    for r in records:
        up = r["speedup"]
        mem = "n/a" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.1f}"
        lines.append(
            f"| {r['row']} | {r['params'] / 1e6:.1f}M | {_fmt(r['sent_per_s'])} | {_fmt(r['tok_per_s'])} | "
            f"{up['median']:.2f}× ({up['min']:.2f}–{up['max']:.2f}) | {mem} |"
        )
    return "\n".join(lines)


def profile_table(records: List[Dict], batches: int) -> str:
    """Markdown: per row, milliseconds per batch in each region and in the rest (share of the total in
    %), and the total; ``batches`` is the number of batches of one pass."""
    cols = list(REGIONS) + ["other", "total"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in records:
        p = r["profile_s"]
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
    """The sweep's points at ``value``: per row its parameters, medians and profile."""
    return [
        {
            "value": value,
            "row": r["row"],
            "params": r["params"],
            "sent_per_s": r["sent_per_s"]["median"],
            "tok_per_s": r["tok_per_s"]["median"],
            "speedup": r["speedup"]["median"],
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
    """CSV with the columns ``KIND, row, params, sent_per_s, tok_per_s, speedup``, one line per point."""
    with atomic_write(path) as f:
        w = csv.writer(f)
        w.writerow([kind, "row", "params", "sent_per_s", "tok_per_s", "speedup"])
        for p in points:
            w.writerow(
                [
                    p["value"],
                    p["row"],
                    p["params"],
                    f"{p['sent_per_s']:.3f}",
                    f"{p['tok_per_s']:.3f}",
                    f"{p['speedup']:.4f}",
                ]
            )


def plot_sweep(points: List[Dict], kind: str, path: str) -> None:
    """Speedup over the first row (left) and sentences/s (right, log scale) against the swept value
    (log-2 axis), a line per row; the image format follows ``path``'s extension (PNG by default)."""
    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(dict.fromkeys(p["row"] for p in points))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in names:
        pts = [p for p in points if p["row"] == name]
        xs = [p["value"] for p in pts]
        ax1.plot(xs, [p["speedup"] for p in pts], marker="o", label=name)
        ax2.plot(xs, [p["sent_per_s"] for p in pts], marker="o", label=name)
    values = sorted({p["value"] for p in points})
    for ax, ylabel in ((ax1, f"speedup over {names[0]}"), (ax2, "sentences/s")):
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
