"""The results tables of ``scripts/reproduce.sh`` (the paper's Table 4; with ``--peers`` also the AAN, SAN
and CAN rows and Table 7, the tricks on AAN and CAN) and ``scripts/training_strategies.sh`` (Table 3), from
what the recipe's stages wrote into a work folder.

Every test set of the work folder (:func:`~.scores.test_sets`) gets a BLEU and a sacreBLEU column, named
by the set; a set that could not be prepared is in the table too, its cells ``missing`` and a note under the
table saying why.
"""

import os
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from .scores import ReportError, _load_json, count_params, read_scores, test_sets, training_state

ROWS = (("baseline", "Baseline"), ("bpe10k", "+ BPE 10K"), ("mdn", "MDN"))
PEER_ROWS = (("aan", "AAN", "AAN"), ("san", "SAN", "SAN"), ("can", "CAN", "CAN"))  # key, System, config prefix
OURS_ROWS = (("aan_mdn", "AAN + Ours", "aan"), ("can_mdn", "CAN + Ours", "can"))  # key, System, its peer's key
MISSING = "missing"


def fmt(x, digits=2):
    """``x`` with ``digits`` decimals, ``–`` for None."""
    return "–" if x is None else f"{x:.{digits}f}"


def _speed(bench: Optional[Dict], name: str, generator: str) -> Optional[Dict]:
    if not bench:
        return None
    for row in bench.get("rows", []):
        if row["model"] == name and row["generator"] == generator and not row.get("int8"):
            return row
    return None


# ------------------------------------------------------------------------------------------------
# BLEU per test set


def bleu_fields(scores: Dict[str, Dict], sets: Sequence[Dict]) -> Dict:
    """A row's BLEU from :func:`~.scores.read_scores`: ``valid_bleu``, ``valid_sacrebleu``, the main test
    set's ``test_bleu``, ``test_sacrebleu``, ``sacrebleu_signature``, and ``test_sets``: ``{set name:
    {"subset", "bleu", "sacrebleu"}}`` (``{"subset", "missing": True}`` for a missing set)."""
    main = scores["test"]
    row = {
        "valid_bleu": scores["valid"]["tok_bleu"],
        "valid_sacrebleu": scores["valid"]["sacrebleu"],
        "test_bleu": main["tok_bleu"],
        "test_sacrebleu": main["sacrebleu"],
        "sacrebleu_signature": main["sacrebleu_signature"],
        "test_sets": {},
    }
    for t in sets:
        s = None if t["missing"] else scores[t["subset"]]
        row["test_sets"][t["name"]] = (
            {"subset": t["subset"], "missing": True}
            if s is None
            else {"subset": t["subset"], "bleu": s["tok_bleu"], "sacrebleu": s["sacrebleu"]}
        )
    return row


def bleu_head(sets: Sequence[Dict]) -> str:
    """The header cells of the test sets: ``NAME BLEU | NAME sacreBLEU`` per set."""
    return " | ".join(f"{t['name']} BLEU | {t['name']} sacreBLEU" for t in sets)


def bleu_cells(row: Dict, sets: Sequence[Dict]) -> str:
    """A row's cells under :func:`bleu_head`: BLEU and sacreBLEU per set, ``missing`` for a missing set."""
    cells = []
    for t in sets:
        s = row["test_sets"][t["name"]]
        cells += [MISSING, MISSING] if s.get("missing") else [fmt(s["bleu"]), fmt(s["sacrebleu"])]
    return " | ".join(cells)


def missing_notes(sets: Sequence[Dict]) -> List[str]:
    """The note under a table for each missing test set (none when every set is there)."""
    return [
        f"*{MISSING}*: test set {t['name']} (subset {t['subset']}) is named in the config but could not be "
        f"prepared: {t.get('reason', 'see prepare.json')}"
        for t in sets
        if t["missing"]
    ]


def data_lines(prepare: Dict, sets: Sequence[Dict] = ()) -> List[str]:
    """What mdn-prepare made of the data (its prepare.json), as markdown lines."""
    splits, bpe = prepare.get("splits") or {}, prepare.get("bpe") or {}
    if not splits or not bpe:
        return []
    counts = [f"{split} {v['pairs']} pairs" for split, v in splits.items() if split != "test" or len(sets) < 2]
    if len(sets) > 1:
        counts += [f"{t['name']} {MISSING if t['missing'] else str(t['pairs']) + ' pairs'}" for t in sets]
    out = ["Data: " + ", ".join(counts) + (" (--quick slice)" if prepare.get("quick") else "") + "."]
    for name, b in bpe.items():
        merges = ", ".join(f"{k} {m['requested']}" for k, m in b["merges"].items())
        vocab = ", ".join(f"{lang} {n}" for lang, n in b["vocab"].items())
        out.append(
            f"BPE `{name}`: {'joint' if b['joint'] else 'separate'} subword-nmt merges ({merges}), "
            f"vocabularies {vocab}, {b['pairs']['train']} training pairs after the length/ratio filter."
        )
    return [" ".join(out), ""]


# ------------------------------------------------------------------------------------------------
# Table 4


def _result_row(work: str, key: str, label: str, bench, gpu, sets: Sequence[Dict]) -> Dict:
    """One row of the results table: #params, BLEU (valid, each test set) and speed (CPU/GPU, both
    generators)."""
    ckpt = os.path.join(work, key, "checkpoint_avg.pt")
    if not os.path.isfile(ckpt):
        raise ReportError(f"{ckpt}: missing; run the recipe's training and evaluation stages first")
    row = {"system": label, "key": key, "checkpoint": ckpt, "params": count_params(ckpt)}
    row.update(bleu_fields(read_scores(work, key, sets), sets))
    for device, b in (("cpu", bench), ("gpu", gpu)):
        for gen in ("fairseq", "fast"):
            r = _speed(b, label, gen)
            row[f"{device}_{gen}_sent_per_s"] = None if r is None else r["sent_per_s"]["median"]
            row[f"{device}_{gen}_speedup"] = None if r is None else r["speedup"]["median"]
    return row


def _times(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _speed_cells(r: Dict, device: str) -> str:
    return " | ".join(
        f"{fmt(r[f'{device}_{g}_sent_per_s'], 1)} | {_times(r[f'{device}_{g}_speedup'])}" for g in ("fairseq", "fast")
    )


def _row_line(r: Dict, sets: Sequence[Dict]) -> str:
    return (
        f"| {r['system']} | {r['params'] / 1e6:.2f}M | {fmt(r['valid_bleu'])} | {bleu_cells(r, sets)} | "
        f"{_speed_cells(r, 'cpu')} |"
    )


def _table_head(sets: Sequence[Dict]) -> List[str]:
    cells = ["System", "#params", "valid BLEU", bleu_head(sets)]
    cells += ["CPU sent/s (fairseq)", "speedup", "CPU sent/s (fast)", "speedup"]
    return ["| " + " | ".join(cells) + " |", "|" + "---|" * (7 + 2 * len(sets))]


_GPU_HEAD = ["| System | GPU sent/s (fairseq) | speedup | GPU sent/s (fast) | speedup |", "|---|---|---|---|---|"]


def _gap_lines(teacher: Dict, student: Dict, sets: Sequence[Dict]) -> Tuple[List[str], Dict[str, float]]:
    """The MDN − teacher BLEU per test set (markdown lines, ``{set name: gap}``)."""
    gaps = {}
    for t in sets:
        a, b = teacher["test_sets"][t["name"]], student["test_sets"][t["name"]]
        if a.get("bleu") is not None and b.get("bleu") is not None:
            gaps[t["name"]] = round(b["bleu"] - a["bleu"], 2)
    if not gaps:
        return [], gaps
    if len(sets) == 1:
        return ["", f"MDN − teacher (+ BPE 10K) test BLEU: {next(iter(gaps.values())):+.2f}."], gaps
    return ["", "MDN − teacher (+ BPE 10K) BLEU: " + ", ".join(f"{k} {v:+.2f}" for k, v in gaps.items()) + "."], gaps


def build_table(work: str, config: Dict[str, str], command: str = "", peers: bool = False) -> Tuple[str, Dict]:
    """results.md text and results.json content from a recipe's work folder (``scripts/reproduce.sh``).

    Columns: valid BLEU, then BLEU and sacreBLEU of every test set (:func:`~.scores.test_sets`; a missing
    set: ``missing`` cells and a note), then speed.  ``peers`` (``reproduce.sh --peers``): the table also has
    the rows of :data:`PEER_ROWS` (Table 4) and a Table 7 block, :data:`OURS_ROWS` under their peers
    (results.json: ``rows`` and ``table7``).  Raises :class:`ReportError` naming a missing checkpoint or
    scores file.
    """
    prepare = _load_json(os.path.join(work, "data", "prepare.json")) or {}
    sets = test_sets(work, config)
    bench = _load_json(os.path.join(work, "bench", "cpu.json"))
    gpu = _load_json(os.path.join(work, "bench", "gpu.json"))
    table4 = ROWS + (tuple((k, label) for k, label, _ in PEER_ROWS) if peers else ())
    rows = [_result_row(work, key, label, bench, gpu, sets) for key, label in table4]
    gap_lines, gaps = _gap_lines(rows[1], rows[2], sets)
    result = {
        "task": config.get("TASK"),
        "source": config.get("SRC"),
        "target": config.get("TGT"),
        "prepare": prepare,
        "test_sets": sets,
        "bench_setting": (bench or {}).get("setting"),
        "gpu_bench_setting": (gpu or {}).get("setting"),
        "rows": rows,
        "mdn_minus_teacher_test_bleu": gaps.get(sets[0]["name"]),
        "mdn_minus_teacher_bleu": gaps,
        "command": command,
    }
    s, t = config.get("SRC"), config.get("TGT")
    lines = [f"# {config.get('TASK')}: {s}→{t}", ""]
    if command:
        lines += [f"Made by `{command}`.", ""]
    lines += data_lines(prepare, sets)
    lines += _table_head(sets) + [_row_line(r, sets) for r in rows]
    notes = missing_notes(sets)
    lines += [""] + notes if notes else []
    if gpu:
        lines += [""] + _GPU_HEAD + [f"| {r['system']} | {_speed_cells(r, 'gpu')} |" for r in rows]
    else:
        lines += ["", "GPU: not measured (no GPU on this machine)."]
    lines += [
        "",
        "BLEU: averaged last 5 epoch checkpoints, beam 4, batch 64, lenpen 0.6; *BLEU* is fairseq's "
        "case-sensitive tokenised BLEU (as the paper), *sacreBLEU* is on detokenised output, signature "
        f"`{rows[0]['sacrebleu_signature']}`.",
        "Speed: sentences/s translating the test source (median of repeats), speedup over Baseline with "
        "fairseq's SequenceGenerator, both models in one run; *fast* is the plugin's beam search "
        "(same hypotheses and scores).",
    ]
    if bench:
        st = bench["setting"]
        lines.append(
            f"Benchmark setting: {st.get('hardware')}, {st.get('threads')} threads, batch {st.get('batch')}, "
            f"beam {st.get('beam')}, {st.get('sentences')} sentences, {st.get('repeats')} repeats."
        )
    lines += gap_lines
    if peers:
        peer_lines, result["table7"] = _peer_blocks(work, config, rows, bench, gpu, sets)
        result["peers"] = {key: _model_text(config, key) for key, _, _ in PEER_ROWS + OURS_ROWS}
        lines += peer_lines
    return "\n".join(lines) + "\n", result


# ------------------------------------------------------------------------------------------------
# --peers: the paper's peers (Table 4) and the tricks on AAN and CAN (Table 7)


def _model_text(config: Dict[str, str], key: str) -> str:
    """The model of row ``key`` as the config names it: ``arch flags`` (``KEY_ARCH``, ``KEY_ARGS``)."""
    prefix = key.upper()
    return " ".join(x for x in (config.get(f"{prefix}_ARCH", "?"), config.get(f"{prefix}_ARGS", "")) if x)


def _ratio(ours: Optional[Dict], peer: Optional[Dict]) -> Optional[float]:
    """Median over the benchmark's repeats of ``ours``'s sentences/s over ``peer``'s (same repeat: the rows
    alternate within a repeat), None when either row is missing."""
    if ours is None or peer is None:
        return None
    pairs = zip(
        ours["sent_per_s"].get("runs") or [ours["sent_per_s"]["median"]],
        peer["sent_per_s"].get("runs") or [peer["sent_per_s"]["median"]],
    )
    return statistics.median(a / b for a, b in pairs)


def _peer_blocks(work: str, config: Dict[str, str], table4: List[Dict], bench, gpu, sets) -> Tuple[List[str], List]:
    """The markdown after Table 4 with ``--peers`` (what the peer rows are, the Table 7 block, the benchmark's
    notes) and the Table 7 rows: each "+ Ours" row with the speedup over its peer per generator."""
    by_key = {r["key"]: r for r in table4}
    rows = []
    head = _table_head(sets)
    lines = [
        "",
        "Peers (rows AAN, SAN, CAN): "
        + "; ".join(f"{label} `{_model_text(config, key)}`" for key, label, _ in PEER_ROWS)
        + "; each trained as the Baseline (baseline BPE, label smoothing 0.1, the same settings and epochs).",
        "",
        "## Table 7 analogue: the tricks on AAN and CAN",
        "",
        head[0] + " × its peer (fairseq / fast) |",
        head[1] + "---|",
    ]
    for key, label, peer in OURS_ROWS:
        row = _result_row(work, key, label, bench, gpu, sets)
        for device, b in (("cpu", bench), ("gpu", gpu)):
            for gen in ("fairseq", "fast"):
                row[f"{device}_{gen}_over_peer"] = _ratio(_speed(b, label, gen), _speed(b, by_key[peer]["system"], gen))
        row["peer"] = peer
        rows.append(row)
        over = " / ".join(_times(row[f"cpu_{g}_over_peer"]) for g in ("fairseq", "fast"))
        own = " / ".join("1.00×" if _speed(bench, by_key[peer]["system"], g) else "–" for g in ("fairseq", "fast"))
        lines += [_row_line(by_key[peer], sets) + f" {own} |", _row_line(row, sets) + f" {over} |"]
    if gpu:
        lines += [""] + _GPU_HEAD
        for row in rows:
            lines += [f"| {r['system']} | {_speed_cells(r, 'gpu')} |" for r in (by_key[row["peer"]], row)]
    lines += [
        "",
        "+ Ours: "
        + "; ".join(f"{label} `{_model_text(config, key)}`" for key, label, _ in OURS_ROWS)
        + "; each trained as the MDN row: MDN BPE, weight distillation from the same teacher (`mdn-init`), "
        f"STUDENT_DATA={config.get('STUDENT_DATA', '?')}, no label smoothing, decoder dropout 0. "
        "*speedup*: over Baseline · fairseq, as above; *× its peer*: over the peer row with the same "
        "generator (median of the per-repeat ratios).",
    ]
    notes = [f"- {name}: {n}" for name, b in (("CPU", bench), ("GPU", gpu)) for n in (b or {}).get("notes") or []]
    if notes:
        lines += ["", "Benchmark notes (mdn-bench; a row without *fast* numbers was left to fairseq's generator):"]
        lines += notes
    return lines, rows


# ------------------------------------------------------------------------------------------------
# Table 3: training strategies

STRATEGY_ROWS = (
    ("bpe10k", "teacher", "{BASELINE_ARCH}, label smoothing 0.1 (the + BPE 10K row of results.md)"),
    ("scratch", "MDN from scratch", "{STUDENT_ARCH}, random init, NLL"),
    ("wd", "+ WD", "{STUDENT_ARCH}, initialised from the teacher (translation_wd), NLL"),
    ("wd_wordkd", "+ WD + word KD", "{STUDENT_ARCH}, initialised from the teacher, (1-a) NLL + a KD"),
    ("wd_seqkd", "+ WD + seq KD", "{STUDENT_ARCH}, mdn-init from the teacher, NLL on original + distilled data"),
)


def _updates(work: str, key: str) -> Optional[int]:
    last = os.path.join(work, key, "checkpoint_last.pt")
    return training_state(last)[1] if os.path.isfile(last) else None


def build_strategies(work: str, config: Dict[str, str], command: str = "") -> Tuple[str, Dict]:
    """The paper's Table 3 analogue from a training_strategies.sh work folder: markdown and the json content
    (BLEU and sacreBLEU per test set, as :func:`build_table`).  Raises :class:`ReportError` naming a missing
    checkpoint or scores file."""
    sets = test_sets(work, config)
    rows = []
    for key, label, training in STRATEGY_ROWS:
        row = {"row": label, "key": key, "training": training.format(**config)}
        ckpt = os.path.join(work, key, "checkpoint_avg.pt")
        if not os.path.isfile(ckpt):
            raise ReportError(f"{ckpt}: missing; run scripts/training_strategies.sh first")
        row["params"] = count_params(ckpt)
        row["updates"] = _updates(work, key)
        row.update(bleu_fields(read_scores(work, key, sets), sets))
        rows.append(row)
    lines = [f"# {config.get('TASK')}: training strategies (the paper's Table 3)", ""]
    if command:
        lines += [f"Made by `{command}`.", ""]
    lines += [
        f"| row | training | #params | updates | valid BLEU | {bleu_head(sets)} |",
        "|" + "---|" * (5 + 2 * len(sets)),
    ]
    for r in rows:
        lines.append(
            f"| {r['row']} | {r['training']} | {r['params'] / 1e6:.2f}M | {r['updates']} | "
            f"{fmt(r['valid_bleu'])} | {bleu_cells(r, sets)} |"
        )
    notes = missing_notes(sets)
    lines += [""] + notes if notes else []
    lines += [
        "",
        "BLEU: averaged last 5 epoch checkpoints, beam 4, batch 64, lenpen 0.6, case-sensitive tokenised "
        "(fairseq) and sacreBLEU (detokenised). The seq-KD student sees original + distilled pairs for half "
        "the epochs (about the same number of updates).",
    ]
    if config.get("STUDENT_DATA"):
        lines.append(
            f"The MDN row of results.md is trained as `STUDENT_DATA={config['STUDENT_DATA']}` "
            "(configs/" + str(config.get("TASK")) + ".sh)."
        )
    result = {"task": config.get("TASK"), "test_sets": sets, "rows": rows, "command": command}
    return "\n".join(lines) + "\n", result
