"""Fig. 1's BLEU half (``scripts/ablation.sh TASK --bpe-sweep 2000,4000,...``): ``BASELINE_ARCH`` trained at
each target merge count, the source BPE as the config's MDN BPE; BLEU (valid, each test set) and CPU speed
(one ``mdn-bench`` run over all points, ``WORK/bpe_sweep/bench/cpu.json``) as CSV, markdown and a plot.

Each merge count gets its own config (:func:`sweep_config_text`: the task config with the MDN BPE's target
merges replaced), prepared by ``mdn-prepare`` into its own folder; the config's own target merge count is
``reproduce.sh``'s ``+ BPE 10K`` model, reused when trained, else trained by the sweep (nothing else of
``reproduce.sh`` is trained).
"""

import csv
import io
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

from .. import report
from ..checkpoint import load_checkpoint
from ..files import atomic_write, write_text
from .plan import AblationError

SWEEP_BENCH = os.path.join("bpe_sweep", "bench", "cpu.json")


def parse_merges(text: str) -> List[int]:
    """``"2000,4000"`` -> ``[2000, 4000]``; anything but distinct positive integers raises
    :class:`AblationError` naming the item."""
    out = []
    for item in text.split(","):
        if not item.strip().isdigit() or int(item) <= 0:
            raise AblationError(
                f"--bpe-sweep {text!r}: {item!r} is not a positive integer (a comma list of target merge counts, "
                "e.g. 2000,4000,6000,10000)"
            )
        if int(item) in out:
            raise AblationError(f"--bpe-sweep {text!r}: {item} is named twice")
        out.append(int(item))
    return out


def sweep_config_text(config_path: str, tgt_merges: int) -> str:
    """The task config at ``config_path`` with the MDN BPE's target merges (``MDN_TGT_MERGES`` and, for
    ``--quick``, ``QUICK_TGT_MERGES``) set to ``tgt_merges`` and ``DATA`` made absolute (the derived config
    lives elsewhere).  Raises :class:`AblationError` for a joint MDN BPE (no target merges of its own)."""
    from ..prepare import load_config, read_config

    values = read_config(config_path)
    if values.get("MDN_JOINT") != "0":
        raise AblationError(
            f"{config_path}: MDN_JOINT={values.get('MDN_JOINT')!r}: --bpe-sweep varies the MDN BPE's target merges, "
            "so it needs a separate target BPE (MDN_JOINT=0)"
        )
    data = load_config(config_path).data
    with open(config_path, encoding="utf-8") as f:
        text = f.read().rstrip("\n") + "\n"
    text += f"# scripts/ablation.sh --bpe-sweep: {os.path.abspath(config_path)} with {tgt_merges} target merges\n"
    if data is not None:
        text += f"DATA={data}\n"
    return text + f"MDN_TGT_MERGES={tgt_merges}\nQUICK_TGT_MERGES={tgt_merges}\n"


def write_sweep_configs(config_path: str, merges: Sequence[int], current: int, out_dir: str) -> Dict[int, str]:
    """Write ``out_dir/tgtN/config.sh`` (:func:`sweep_config_text`) for each merge count ``N`` other than
    ``current`` (the config's own: ``reproduce.sh``'s + BPE 10K model, trained on its data).  Returns ``{N: path}``."""
    out = {}
    for n in merges:
        if n != current:
            out[n] = os.path.join(out_dir, f"tgt{n}", "config.sh")
            write_text(out[n], sweep_config_text(config_path, n))
    return out


def _point(work: str, merges: int, key: str, sets: List[Dict], bench: Optional[Dict]) -> Dict:
    """One merge count: its model's target vocabulary, #params, BLEU (valid, each test set) and speed."""
    ckpt = os.path.join(work, key, "checkpoint_avg.pt")
    if not os.path.isfile(ckpt):
        raise AblationError(f"{ckpt}: missing; run scripts/ablation.sh --bpe-sweep (training, evaluation) first")
    bleu = report.bleu_fields(report.read_scores(work, key, sets), sets)
    model = load_checkpoint(ckpt)["model"]
    row = {
        "tgt_merges": merges,
        "key": key,
        "tgt_vocab": int(model["decoder.embed_tokens.weight"].shape[0]),
        "params": report.count_state_params(model),
        "valid_bleu": bleu["valid_bleu"],
    }
    for name, s in bleu["test_sets"].items():
        row[f"{name}_bleu"] = s.get("bleu")  # None: a set that could not be prepared
    for gen in ("fairseq", "fast"):
        r = report._speed(bench, key, gen)
        row[f"cpu_{gen}_sent_per_s"] = None if r is None else round(r["sent_per_s"]["median"], 2)
    return row


def build_sweep(work: str, points: Dict[int, str], command: str = "") -> Tuple[str, List[Dict]]:
    """The sweep's markdown and rows (``{merges: training key}`` -> one row per merge count, ascending):
    target vocabulary, #params, BLEU (valid, each test set), CPU sentences/s per generator."""
    sets = report.test_sets(work)
    bench = report._load_json(os.path.join(work, SWEEP_BENCH))
    rows = [_point(work, n, points[n], sets, bench) for n in sorted(points)]
    lines = ["# BPE merges vs BLEU and speed (the paper's Fig. 1)", ""]
    if command:
        lines += [f"Made by `{command}`.", ""]
    lines += [
        "| target merges | target vocab | #params | valid BLEU | "
        + " | ".join(f"{s['name']} BLEU" for s in sets)
        + " | CPU sent/s (fairseq) | CPU sent/s (fast) |",
        "|---" * (6 + len(sets)) + "|",
    ]
    for r in rows:
        cells = [report.fmt(r["valid_bleu"])]
        cells += [report.MISSING if s["missing"] else report.fmt(r[f"{s['name']}_bleu"]) for s in sets]
        lines.append(
            f"| {r['tgt_merges']} | {r['tgt_vocab']} | {r['params'] / 1e6:.2f}M | {' | '.join(cells)} | "
            f"{report.fmt(r['cpu_fairseq_sent_per_s'], 1)} | {report.fmt(r['cpu_fast_sent_per_s'], 1)} |"
        )
    st = (bench or {}).get("setting") or {}
    lines += [
        "",
        "Each point: the baseline architecture, label smoothing 0.1, MAX_EPOCH epochs, on the MDN BPE with this "
        "many target merges (the source BPE as the config's). BLEU: averaged last 5 epoch checkpoints, beam 4, "
        "lenpen 0.6, tokenised. Speed: all points in one mdn-bench run"
        + (f", {st['hardware']}, {st['threads']} threads, batch {st['batch']}, beam {st['beam']}." if st else "."),
        *report.missing_notes(sets),
    ]
    return "\n".join(lines) + "\n", rows


def write_csv(rows: List[Dict], path: str) -> None:
    """The sweep's rows as CSV (atomically)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def plot(rows: List[Dict], path: str) -> Optional[str]:
    """BLEU (left axis) and CPU sentences/s (right axis) against target merges, as a PNG (atomically).
    Returns None, or the reason there is no plot (matplotlib missing: ``pip install 'mdn-fairseq[bench]'``)."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # before its import, which logs at DEBUG
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"matplotlib is not installed: no {path} (pip install 'mdn-fairseq[bench]'); the CSV has the numbers"
    x = [r["tgt_merges"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in [k for k in rows[0] if k.endswith("_bleu") and any(r[k] is not None for r in rows)]:
        ax.plot(x, [r[k] for r in rows], marker="o", label=k[: -len("_bleu")] + " BLEU")
    ax.set_xlabel("target BPE merge operations")
    ax.set_ylabel("tokenised BLEU")
    speed = ax.twinx()
    for gen, style in (("fairseq", "--"), ("fast", ":")):
        ys = [r[f"cpu_{gen}_sent_per_s"] for r in rows]
        if any(y is not None for y in ys):
            speed.plot(x, ys, style, marker="s", color="grey", label=f"CPU sent/s ({gen})")
    speed.set_ylabel("CPU sentences/s")
    handles = ax.get_legend_handles_labels()[0] + speed.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower right")
    ax.set_title("BPE merges vs BLEU and speed (Fig. 1)")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return None
