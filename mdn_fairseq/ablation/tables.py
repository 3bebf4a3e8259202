"""``ablation.md`` and ``ablation.json``: the paper's Tables 2 and 5 from a ``scripts/ablation.sh`` work folder.

Every row: #params, BLEU and sacreBLEU on valid and on each test set of the config (:mod:`mdn_fairseq.report`'s
``test_sets`` and ``read_scores``; a set that could not be prepared is marked missing) and
CPU speed from the one ``mdn-bench`` run over all rows (``WORK/ablation/bench/cpu.json``, the rows named by
their training key), with both generators; speedups are over the table's first row with fairseq's generator
(median of the per-repeat ratios, the rows alternate within a repeat).
"""

import os
from typing import Dict, List, Optional, Tuple

from .. import report
from .plan import TABLES, AblationError, Training, suffix, training

TITLES = {2: "Table 2 analogue: each structure trick alone", 5: "Table 5 analogue: the tricks one after another"}


def bench_path(work: str, tables=TABLES) -> str:
    """The ``mdn-bench`` output of an ablation run for ``tables``: ``WORK/ablation/bench/cpu.json`` for both
    tables, ``WORK/ablation/bench_table2/cpu.json`` for Table 2 alone (each run benchmarks its own rows)."""
    return os.path.join(work, "ablation", "bench" + suffix(tables), "cpu.json")


def plan_path(work: str, tables=TABLES) -> str:
    """The plan an ablation run for ``tables`` writes: ``WORK/ablation/plan.json``, ``plan_table2.json``, ..."""
    return os.path.join(work, "ablation", f"plan{suffix(tables)}.json")


def _row(work: str, plan: Dict, row: Dict, sets: List[Dict], bench: Optional[Dict], base: str) -> Dict:
    """One table row: the plan's row with its training's #params, BLEU per set and CPU speed over ``base``'s."""
    key = row["key"]
    t: Training = training(plan, key)
    ckpt = os.path.join(work, key, "checkpoint_avg.pt")
    if t is None or not os.path.isfile(ckpt):
        raise AblationError(f"{ckpt}: missing; run scripts/ablation.sh (its training and evaluation stages) first")
    out = dict(row, model=" ".join(t.model_args()), recipe=t.recipe(), trained_by=t.owner)
    out["params"] = report.count_params(ckpt)
    out.update(report.bleu_fields(report.read_scores(work, key, sets), sets))
    for gen in ("fairseq", "fast"):
        mine = report._speed(bench, key, gen)
        out[f"cpu_{gen}_sent_per_s"] = None if mine is None else mine["sent_per_s"]["median"]
        out[f"cpu_{gen}_speedup"] = report._ratio(mine, report._speed(bench, base, "fairseq"))
    return out


def _line(r: Dict, sets: List[Dict]) -> str:
    speed = report._speed_cells(r, "cpu")
    return (
        f"| {r['label']} | {r['change']} | {r['params'] / 1e6:.2f}M | {report.fmt(r['valid_bleu'])} | "
        f"{report.bleu_cells(r, sets)} | {speed} |"
    )


def _dims(plan: Dict, key: str) -> str:
    m = plan["models"].get(key) or {}
    ffn = "no FFN" if m.get("no_decoder_ffn") else f"FFN {m.get('decoder_ffn_embed_dim')}"
    heads, dim = m.get("decoder_attention_heads"), m.get("decoder_attention_dim") or m.get("encoder_embed_dim")
    rank = m.get("output_rank") or "full"
    return (
        f"{m.get('encoder_layers')}+{m.get('decoder_layers')} layers, {m.get('encoder_embed_dim')} wide "
        f"(encoder: {m.get('encoder_attention_heads')} heads, FFN {m.get('encoder_ffn_embed_dim')}; decoder: "
        f"{heads} head(s) over {dim} dims, {ffn}, output rank {rank}), dropout {m.get('dropout')}"
    )


def _reuse_lines(plan: Dict) -> List[str]:
    """Which rows are one training (and which are reproduce.sh's)."""
    out = []
    for t in plan["trainings"]:
        rows = [f"Table {r['table']} *{r['label']}*" for r in plan["rows"] if r["key"] == t["key"]]
        if len(rows) > 1 or t["owner"] == "reproduce.sh":
            mine = " (reproduce.sh's model)" if t["owner"] == "reproduce.sh" else ""
            out.append(f"- `WORK/{t['key']}`{mine}: " + " = ".join(rows))
    return out


def build_tables(work: str, config: Dict[str, str], plan: Dict, command: str = "") -> Tuple[str, Dict]:
    """``ablation.md`` text and ``ablation.json`` content from an ablation work folder and its ``plan``
    (:func:`~mdn_fairseq.ablation.plan.build_plan`): the plan's tables (both for a plan without the key),
    speeds from :func:`bench_path`.  Raises :class:`AblationError` naming a missing
    checkpoint or scores file; speeds missing from the benchmark are shown as "–"."""
    prepare = report._load_json(os.path.join(work, "data", "prepare.json")) or {}
    tables = tuple(plan.get("tables", TABLES))
    bench = report._load_json(bench_path(work, tables))
    sets = report.test_sets(work, config)
    result = {"task": config.get("TASK"), "command": command, "test_sets": sets, "tables": {}, "plan": plan}
    names = " and ".join(map(str, tables))
    lines = [f"# {config.get('TASK')}: ablations (the paper's Table{'s' if len(tables) > 1 else ''} {names})", ""]
    if command:
        lines += [f"Made by `{command}`.", ""]
    if prepare.get("quick"):
        updates = config.get("QUICK_MAX_UPDATE", "a few")
        lines += [f"**--quick: a slice and {updates} updates per model. These numbers test the pipeline; they are not "
                  "results.**", ""]  # fmt: skip
    lines += report.data_lines(prepare, sets)
    for table in tables:
        rows = [r for r in plan["rows"] if r["table"] == table]
        built = [_row(work, plan, r, sets, bench, rows[0]["key"]) for r in rows]
        result["tables"][str(table)] = built
        lines += [f"## {TITLES[table]}", ""]
        lines += [
            f"| row | {'trick' if table == 2 else 'adds'} | #params | valid BLEU | {report.bleu_head(sets)} | "
            "CPU sent/s (fairseq) | speedup | CPU sent/s (fast) | speedup |",
            "|---" * (8 + 2 * len(sets)) + "|",
        ]
        lines += [_line(r, sets) for r in built] + [""]
    notes = report.missing_notes(sets)
    lines += notes + [""] if notes else []
    result["setting"] = _setting(config, plan, bench, prepare, tables)
    result["setting"]["sacrebleu_signature"] = result["tables"][str(tables[0])][0]["sacrebleu_signature"]
    lines += _setting_lines(config, plan, result["setting"], tables)
    lines += ["", "Rows that are the same model, trained once:", *_reuse_lines(plan)]
    return "\n".join(lines) + "\n", result


def _setting(config: Dict[str, str], plan: Dict, bench: Optional[Dict], prepare: Dict, tables=TABLES) -> Dict:
    st = (bench or {}).get("setting") or {}
    five = 5 in tables
    return {
        "data": (prepare.get("settings") or {}).get("splits"),
        "quick": bool(prepare.get("quick")),
        "baseline": plan["models"].get("baseline" if five else plan["rows"][0]["key"]),
        "student": (plan["models"].get("mdn") or plan["models"].get("abl5_no_ls")) if five else None,
        "max_epoch": config.get("MAX_EPOCH"),
        "student_max_epoch": config.get("STUDENT_MAX_EPOCH"),
        **{k: st.get(k) for k in ("hardware", "threads", "batch", "beam", "sentences", "repeats")},
    }


def _setting_lines(config: Dict[str, str], plan: Dict, s: Dict, tables=TABLES) -> List[str]:
    arch = config.get("BASELINE_ARCH")
    if 5 in tables:
        student = "mdn" if "mdn" in plan["models"] else "abl5_no_ls"
        models = (
            f"Models: `{arch}` (Baseline) {_dims(plan, 'baseline')}; the last Table 5 row {_dims(plan, student)}. "
            f"Each row is `{arch}` with the flags of the rows above it (Table 5)"
            + (" or of its trick alone (Table 2)" if 2 in tables else "")
            + f": the config's ABLATION_* variables. Trained from scratch for MAX_EPOCH={s['max_epoch']} epochs with "
            "label smoothing 0.1 (on the MDN BPE but for Table 5's Baseline); from *+ WD* on, initialised from the "
            f"teacher (the *+ merge operations* row) for STUDENT_MAX_EPOCH={s['student_max_epoch']}."
        )
    else:
        models = (
            f"Models: `{arch}` (Baseline) {_dims(plan, plan['rows'][0]['key'])}. Each row is `{arch}` with the flags "
            f"of its trick alone: the config's ABLATION_* variables. Trained from scratch on the MDN BPE for "
            f"MAX_EPOCH={s['max_epoch']} epochs with label smoothing 0.1."
        )
    lines = [
        models,
        "BLEU: averaged last 5 epoch checkpoints, beam 4, batch 64, lenpen 0.6; *BLEU* is fairseq's case-sensitive "
        f"tokenised BLEU (as the paper), *sacreBLEU* is on detokenised output, signature `{s['sacrebleu_signature']}`.",
    ]
    if s.get("hardware"):
        lines.append(
            f"Speed: every row in one mdn-bench run on the test source, {s['hardware']}, {s['threads']} threads, "
            f"batch {s['batch']}, beam {s['beam']}, {s['sentences']} sentences, {s['repeats']} repeats; speedup "
            "over the table's first row with fairseq's generator; *fast* is the plugin's beam search."
        )
    else:
        lines.append(f"Speed: not measured (no {bench_path('WORK', tables)}).")
    return lines
