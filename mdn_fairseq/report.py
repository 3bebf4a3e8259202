"""The recipe's bookkeeping as a library: training state of a checkpoint, BLEU of a translation, the
results tables of ``scripts/reproduce.sh`` (the paper's Table 4; with ``--peers`` also the AAN, SAN and CAN rows
and Table 7, the tricks on AAN and CAN) and ``scripts/training_strategies.sh`` (Table 3).  The ``mdn-report`` CLI (:mod:`mdn_fairseq.cli.report`) is a thin layer over it.

BLEU: :func:`score` reads ``fairseq-generate`` output (``--remove-bpe``, no ``--tokenizer``): the
case-sensitive tokenised BLEU that fairseq prints (what the paper reports), and sacreBLEU of the
Moses-detokenised hypotheses against the untokenised references, with its signature.
"""

import json
import os
import re
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from .checkpoint import load_checkpoint
from .errors import MDNError

ROWS = (("baseline", "Baseline"), ("bpe10k", "+ BPE 10K"), ("mdn", "MDN"))


class ReportError(MDNError):
    """A missing or malformed input; the message names it."""


# ------------------------------------------------------------------------------------------------
# training state


def training_state(path: str) -> Tuple[int, int]:
    """(epochs finished, updates) recorded in a fairseq checkpoint."""
    state = load_checkpoint(path)
    extra = state.get("extra_state") or {}
    itr = extra.get("train_iterator") or {}
    # fairseq stores the epoch in progress, or the next one (0 iterations in) once an epoch has ended
    finished = int(itr.get("epoch", 1)) - 1
    history = state.get("optimizer_history") or [{}]
    return finished, int(history[-1].get("num_updates", 0))


def training_done(path: str, max_epoch: int, max_update: int = 0) -> bool:
    """Whether ``fairseq-train --max-epoch max_epoch [--max-update max_update]`` has nothing left to do."""
    if not os.path.isfile(path):
        return False
    epochs, updates = training_state(path)
    return epochs >= max_epoch or (max_update > 0 and updates >= max_update)


def count_params(path: str) -> int:
    model = load_checkpoint(path)["model"]
    return sum(v.numel() for k, v in model.items() if k.endswith(("weight", "bias")) and "_float_tensor" not in k)


# ------------------------------------------------------------------------------------------------
# BLEU


_BLEU_LINE = re.compile(r"BLEU4? = ([0-9.]+)")


def parse_generate(path: str) -> Tuple[List[str], Optional[float]]:
    """Hypotheses (``D-`` lines, in sentence order) and the BLEU fairseq-generate printed (or None)."""
    if not os.path.isfile(path):
        raise ReportError(f"{path}: no such fairseq-generate output")
    hyps: Dict[int, str] = {}
    bleu = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("D-"):
                head, _score, text = (line.rstrip("\n").split("\t") + ["", ""])[:3]
                hyps[int(head[2:])] = text
            elif "Generate" in line and "BLEU" in line:
                m = _BLEU_LINE.search(line)
                bleu = float(m.group(1)) if m else None
    if not hyps:
        raise ReportError(f"{path}: no hypotheses (D- lines); did fairseq-generate fail? see its .err file")
    ids = sorted(hyps)
    if ids != list(range(len(ids))):
        missing = sorted(set(range(ids[-1] + 1)) - set(ids))[:5]
        raise ReportError(
            f"{path}: hypotheses missing for sentences {missing}...: fairseq-generate dropped them; generate with "
            "--task translation_mdn (it keeps every sentence) or pass --required-batch-size-multiple 1 "
            "(fairseq's own tasks drop a last partial batch)"
        )
    return [hyps[i] for i in ids], bleu


def read_lines(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise ReportError(f"{path}: no such reference file")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def sacrebleu_score(hyps_tok: Sequence[str], refs: Sequence[Sequence[str]], lang: str) -> Dict:
    """sacreBLEU of Moses-detokenised ``hyps_tok`` against untokenised ``refs`` (one list per reference)."""
    import sacrebleu
    from sacremoses import MosesDetokenizer

    for i, ref in enumerate(refs):
        if len(ref) != len(hyps_tok):
            raise ReportError(f"reference {i} has {len(ref)} lines for {len(hyps_tok)} hypotheses")
    detok = MosesDetokenizer(lang=lang)
    hyps = [detok.detokenize(h.split()) for h in hyps_tok]
    metric = sacrebleu.metrics.BLEU()
    result = metric.corpus_score(hyps, [list(r) for r in refs])
    return {"score": round(result.score, 2), "signature": str(metric.get_signature()), "detokenised": hyps}


def score(generate_path: str, ref_paths: Sequence[str], lang: str) -> Dict:
    hyps, bleu = parse_generate(generate_path)
    sacre = sacrebleu_score(hyps, [read_lines(p) for p in ref_paths], lang)
    return {
        "sentences": len(hyps),
        "tok_bleu": bleu,
        "sacrebleu": sacre["score"],
        "sacrebleu_signature": sacre["signature"],
        "references": list(ref_paths),
        "detokenised": sacre["detokenised"],
    }


# ------------------------------------------------------------------------------------------------
# results table


def _load_json(path: str) -> Optional[Dict]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_config(path: str) -> Dict[str, str]:
    from .prepare import read_config as _read

    return _read(path)


def _speed(bench: Optional[Dict], name: str, generator: str) -> Optional[Dict]:
    if not bench:
        return None
    for row in bench.get("rows", []):
        if row["model"] == name and row["generator"] == generator and not row.get("int8"):
            return row
    return None


def fmt(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}"


def data_lines(prepare: Dict) -> List[str]:
    """What mdn-prepare made of the data (its prepare.json), as markdown lines."""
    splits, bpe = prepare.get("splits") or {}, prepare.get("bpe") or {}
    if not splits or not bpe:
        return []
    out = [
        "Data: "
        + ", ".join(f"{split} {v['pairs']} pairs" for split, v in splits.items())
        + (" (--quick slice)" if prepare.get("quick") else "")
        + "."
    ]
    for name, b in bpe.items():
        merges = ", ".join(f"{k} {m['requested']}" for k, m in b["merges"].items())
        vocab = ", ".join(f"{lang} {n}" for lang, n in b["vocab"].items())
        out.append(
            f"BPE `{name}`: {'joint' if b['joint'] else 'separate'} subword-nmt merges ({merges}), "
            f"vocabularies {vocab}, {b['pairs']['train']} training pairs after the length/ratio filter."
        )
    return [" ".join(out), ""]


def _result_row(work: str, key: str, label: str, bench: Optional[Dict], gpu: Optional[Dict]) -> Dict:
    """One row of the results table: #params, BLEU (valid/test) and speed (CPU/GPU, both generators)."""
    ckpt = os.path.join(work, key, "checkpoint_avg.pt")
    if not os.path.isfile(ckpt):
        raise ReportError(f"{ckpt}: missing; run the recipe's training and evaluation stages first")
    row = {"system": label, "key": key, "checkpoint": ckpt, "params": count_params(ckpt)}
    for split in ("valid", "test"):
        s = _load_json(os.path.join(work, key, f"scores.{split}.json"))
        if s is None:
            raise ReportError(f"{os.path.join(work, key, f'scores.{split}.json')}: missing; run the evaluation")
        row[f"{split}_bleu"] = s["tok_bleu"]
        row[f"{split}_sacrebleu"] = s["sacrebleu"]
        row["sacrebleu_signature"] = s["sacrebleu_signature"]
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


def _row_line(r: Dict) -> str:
    return (
        f"| {r['system']} | {r['params'] / 1e6:.2f}M | {fmt(r['valid_bleu'])} | {fmt(r['test_bleu'])} | "
        f"{fmt(r['test_sacrebleu'])} | {_speed_cells(r, 'cpu')} |"
    )


_TABLE_HEAD = [
    "| System | #params | valid BLEU | test BLEU | test sacreBLEU | CPU sent/s (fairseq) | speedup | "
    "CPU sent/s (fast) | speedup |",
    "|---|---|---|---|---|---|---|---|---|",
]
_GPU_HEAD = ["| System | GPU sent/s (fairseq) | speedup | GPU sent/s (fast) | speedup |", "|---|---|---|---|---|"]


def build_table(work: str, config: Dict[str, str], command: str = "", peers: bool = False) -> Tuple[str, Dict]:
    """results.md text and results.json content from a recipe's work folder (``scripts/reproduce.sh``).

    ``peers`` (``reproduce.sh --peers``): the table also has the rows of :data:`PEER_ROWS` (Table 4) and a
    Table 7 block, :data:`OURS_ROWS` under their peers (results.json: ``rows`` and ``table7``).
    Raises :class:`ReportError` naming a missing checkpoint or scores file.
    """
    prepare = _load_json(os.path.join(work, "data", "prepare.json")) or {}
    bench = _load_json(os.path.join(work, "bench", "cpu.json"))
    gpu = _load_json(os.path.join(work, "bench", "gpu.json"))
    table4 = ROWS + (tuple((k, label) for k, label, _ in PEER_ROWS) if peers else ())
    rows = [_result_row(work, key, label, bench, gpu) for key, label in table4]
    teacher, student = rows[1], rows[2]
    gap = (
        None
        if teacher["test_bleu"] is None or student["test_bleu"] is None
        else round(student["test_bleu"] - teacher["test_bleu"], 2)
    )
    result = {
        "task": config.get("TASK"),
        "source": config.get("SRC"),
        "target": config.get("TGT"),
        "prepare": prepare,
        "bench_setting": (bench or {}).get("setting"),
        "gpu_bench_setting": (gpu or {}).get("setting"),
        "rows": rows,
        "mdn_minus_teacher_test_bleu": gap,
        "command": command,
    }
    s, t = config.get("SRC"), config.get("TGT")
    lines = [f"# {config.get('TASK')}: {s}→{t}", ""]
    if command:
        lines += [f"Made by `{command}`.", ""]
    lines += data_lines(prepare)
    lines += _TABLE_HEAD + [_row_line(r) for r in rows]
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
    if gap is not None:
        lines += ["", f"MDN − teacher (+ BPE 10K) test BLEU: {gap:+.2f}."]
    if peers:
        peer_lines, result["table7"] = _peer_blocks(work, config, rows, bench, gpu)
        result["peers"] = {key: _model_text(config, key) for key, _, _ in PEER_ROWS + OURS_ROWS}
        lines += peer_lines
    return "\n".join(lines) + "\n", result


# ------------------------------------------------------------------------------------------------
# --peers: the paper's peers (Table 4) and the tricks on AAN and CAN (Table 7)

PEER_ROWS = (("aan", "AAN", "AAN"), ("san", "SAN", "SAN"), ("can", "CAN", "CAN"))  # key, System, config prefix
OURS_ROWS = (("aan_mdn", "AAN + Ours", "aan"), ("can_mdn", "CAN + Ours", "can"))  # key, System, its peer's key


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


def _peer_blocks(work: str, config: Dict[str, str], table4: List[Dict], bench, gpu) -> Tuple[List[str], List[Dict]]:
    """The markdown after Table 4 with ``--peers`` (what the peer rows are, the Table 7 block, the benchmark's
    notes) and the Table 7 rows: each "+ Ours" row with the speedup over its peer per generator."""
    by_key = {r["key"]: r for r in table4}
    rows = []
    lines = [
        "",
        "Peers (rows AAN, SAN, CAN): "
        + "; ".join(f"{label} `{_model_text(config, key)}`" for key, label, _ in PEER_ROWS)
        + "; each trained as the Baseline (baseline BPE, label smoothing 0.1, the same settings and epochs).",
        "",
        "## Table 7 analogue: the tricks on AAN and CAN",
        "",
        _TABLE_HEAD[0] + " × its peer (fairseq / fast) |",
        _TABLE_HEAD[1] + "---|",
    ]
    for key, label, peer in OURS_ROWS:
        row = _result_row(work, key, label, bench, gpu)
        for device, b in (("cpu", bench), ("gpu", gpu)):
            for gen in ("fairseq", "fast"):
                row[f"{device}_{gen}_over_peer"] = _ratio(_speed(b, label, gen), _speed(b, by_key[peer]["system"], gen))
        row["peer"] = peer
        rows.append(row)
        over = " / ".join(_times(row[f"cpu_{g}_over_peer"]) for g in ("fairseq", "fast"))
        own = " / ".join("1.00×" if _speed(bench, by_key[peer]["system"], g) else "–" for g in ("fairseq", "fast"))
        lines += [_row_line(by_key[peer]) + f" {own} |", _row_line(row) + f" {over} |"]
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
    """The paper's Table 3 analogue from a training_strategies.sh work folder."""
    rows = []
    for key, label, training in STRATEGY_ROWS:
        row = {"row": label, "key": key, "training": training.format(**config)}
        ckpt = os.path.join(work, key, "checkpoint_avg.pt")
        if not os.path.isfile(ckpt):
            raise ReportError(f"{ckpt}: missing; run scripts/training_strategies.sh first")
        row["params"] = count_params(ckpt)
        row["updates"] = _updates(work, key)
        for split in ("valid", "test"):
            sc = _load_json(os.path.join(work, key, f"scores.{split}.json"))
            if sc is None:
                raise ReportError(f"{os.path.join(work, key, f'scores.{split}.json')}: missing; run the evaluation")
            row[f"{split}_bleu"], row[f"{split}_sacrebleu"] = sc["tok_bleu"], sc["sacrebleu"]
        rows.append(row)
    lines = [f"# {config.get('TASK')}: training strategies (the paper's Table 3)", ""]
    if command:
        lines += [f"Made by `{command}`.", ""]
    lines += [
        "| row | training | #params | updates | valid BLEU | test BLEU | test sacreBLEU |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['row']} | {r['training']} | {r['params'] / 1e6:.2f}M | {r['updates']} | "
            f"{fmt(r['valid_bleu'])} | {fmt(r['test_bleu'])} | {fmt(r['test_sacrebleu'])} |"
        )
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
    return "\n".join(lines) + "\n", {"task": config.get("TASK"), "rows": rows, "command": command}
