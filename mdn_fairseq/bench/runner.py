"""One ``mdn-bench`` run: the models, their rows, the measurement, the tables and the files.

:func:`run` takes the command line and returns what ``--out-json`` holds: ``setting`` (hardware, torch,
every knob), ``peaks`` (the machine's measured peak per precision, :mod:`.roofline`), ``rows``
(:func:`~.measure.row_records` with the roofline fields, and ``bleu`` with ``--reference``) and with
``--latency`` ``latency`` (:mod:`.latency`), or, with ``--sweep``, ``sweep`` (its points, CSV and plot
paths), ``notes`` (rows left out and why) and ``memory_method``.
"""

import logging
import os
import platform
from typing import Dict, List, Optional, Tuple

import torch

from ..errors import MDNError
from ..fast_generator import decoder_unsupported_reason
from ..files import write_json, write_text
from . import tables
from .ct2 import CT2Generator, ct2_models
from .floor import floor_applies, kernel_floor
from .inputs import make_batches, random_sentences, read_sentences
from .latency import latency_records, time_latency
from .measure import PeakMemory, Row, build_generator, hardware, row_records, time_rows
from .models import (
    Model,
    autocast_dtype,
    autocast_variants,
    checkpoint_models,
    int8_variants,
    synthetic_models,
    to_device,
)
from .options import parse_args
from .profile import profile_row
from .quality import add_bleu
from .roofline import add_roofline, measure_peaks

logger = logging.getLogger("mdn_fairseq.bench")


def load_models(args, notes: List[str], tgt_vocab: Optional[int] = None) -> List[Model]:
    """The run's models (``--synthetic`` or ``--path``), their int8 variants with ``--int8`` and bf16/fp16
    variants with ``--bf16``, on the device, then the CTranslate2 models with ``--ctranslate2``;
    ``tgt_vocab`` overrides ``--tgt-vocab`` (the bpe sweep).  Why a variant is not run goes to ``notes``."""
    if args.synthetic:
        base = synthetic_models(args.archs, args.src_vocab, tgt_vocab or args.tgt_vocab, args.seed)
    else:
        base = checkpoint_models(args.path, args.data, args.input, args.name)
    models = list(base)
    if args.int8:
        models += int8_variants(base)
    if args.bf16:
        dtype = autocast_dtype(args.device)
        if dtype is None:
            notes.append("--bf16: no bf16 rows (this CPU has no bf16 instructions: autocast would emulate them)")
        else:
            models += autocast_variants(base, dtype)
    to_device(models, args.device, args.fp16)
    if args.ctranslate2:
        models += ct2_models(base, bool(args.synthetic), args.seed, args.device, args.threads, args.fp16, notes)
    return models


def _sentences(args, models: List[Model], batch_size: int, src_len: Optional[int]):
    """The run's synthetic sentences (None for checkpoints, which read their --input): random ids of the
    smallest source vocabulary, ``src_len`` tokens each when given (the srclen sweep)."""
    if not args.synthetic:
        return None
    if src_len is not None:
        limit = min(m.model.max_positions()[0] for m in models)
        if src_len > limit:
            raise MDNError(f"--sweep-values: source length {src_len} is above the models' limit of {limit} positions")
    vocab = min(len(m.src_dict) for m in models)
    lengths = dict(min_len=src_len, max_len=src_len) if src_len is not None else {}
    return random_sentences(args.num_sentences or 2 * batch_size, vocab, seed=args.seed, **lengths)


def _generator(args, kind: str, m: Model, beam: int):
    if kind == "ctranslate2":
        return CT2Generator(m, beam, args.out_len, args.max_len_a, args.max_len_b)
    return build_generator(kind, m, beam, args.out_len, args.max_len_a, args.max_len_b)


def make_rows(
    args,
    models: List[Model],
    batch_size: int,
    beam: int,
    notes: List[str],
    src_len: Optional[int] = None,
    max_sentences: Optional[int] = None,
) -> List[Row]:
    """A row per model and ``--generator`` (CTranslate2 models: one ``ctranslate2`` row), all models on the
    same sentences (the first ``max_sentences``, when given); a model the fast generator cannot run gets no
    fast row (the reason goes to ``notes``)."""
    shared = _sentences(args, models, batch_size, src_len)
    rows = []
    for m in models:
        sentences = shared if shared is not None else read_sentences(m.input, m.src_dict)
        batches = make_batches(sentences[:max_sentences], batch_size, m.src_dict.pad(), m.src_dict.eos())
        if args.device == "cuda":
            from fairseq import utils

            batches = [utils.move_to_cuda(b) for b in batches]
        for kind in ["ctranslate2"] if m.engine is not None else args.generators:
            reason = decoder_unsupported_reason(m.model) if kind.startswith("fast") else None
            if reason is not None:
                notes.append(f"{m.name}: no {kind} row ({reason})")
                continue
            gen = _generator(args, kind, m, beam)
            fallback = getattr(gen, "encoder_fallback_reason", None) if kind.startswith("fast") else None
            if fallback is not None:
                notes.append(f"{m.name} · {kind}: the encoder runs its own forward ({fallback})")
            rows.append(Row(m, kind, gen, batches, device=args.device))
    return rows


def run_peaks(args, models: List[Model], peaks: Dict) -> Dict:
    """``peaks`` completed with the measured peak of every precision of ``models`` not yet in it."""
    missing = [m.precision(args.fp16) for m in models if m.precision(args.fp16) not in peaks]
    if missing:
        logger.info("measuring the peak of %s (%d^3 products, %d threads)", ", ".join(dict.fromkeys(missing)),
                    args.peak_size, args.threads)  # fmt: skip
        peaks.update(measure_peaks(missing, args.device, args.peak_size))
    return peaks


def measure(
    args, models: List[Model], batch_size: int, beam: int, notes: List[str], peaks: Dict, src_len=None
) -> Tuple[List[Row], List[Dict]]:
    """The rows of ``models`` timed side by side (and profiled with ``--profile``; CTranslate2 rows have
    no module profile; with ``--floor`` the fp32 CPU rows' kernel floor), and their records with the roofline fields (and BLEU with ``--reference``)."""
    rows = make_rows(args, models, batch_size, beam, notes, src_len)
    time_rows(rows, args.repeats, args.warmup, args.out_len, args.device)
    if args.profile:
        for row in rows:
            if row.model.engine is None:
                row.profile = profile_row(row, args.out_len, args.device)
    if args.floor:
        for row in rows:
            if floor_applies(row):
                row.floor = kernel_floor(row, args.out_len)
    records = row_records(rows)
    add_roofline(records, rows, beam, run_peaks(args, models, peaks), args.fp16)
    if args.reference:
        add_bleu(records, rows, args.reference)
    return rows, records


def _ct2_version() -> str:
    import ctranslate2

    return ctranslate2.__version__


def make_setting(args) -> Dict:
    """Everything that decides the numbers, for the JSON and the setting line."""
    fixed = args.out_len is not None
    return {
        "hardware": hardware(args.device), "device": args.device, "fp16": args.fp16, "threads": args.threads,
        "batch": args.batch_size, "beam": args.beam, "out_len": args.out_len,
        "max_len_a": None if fixed else args.max_len_a, "max_len_b": None if fixed else args.max_len_b,
        "repeats": args.repeats, "warmup": args.warmup, "seed": args.seed, "generators": args.generators,
        "int8": args.int8, "bf16": args.bf16, "ctranslate2": _ct2_version() if args.ctranslate2 else None,
        "torch": torch.__version__, "python": platform.python_version(), "peak_size": args.peak_size,
        "models": args.synthetic or args.path, "input": args.input or "random token ids, 20-30 tokens",
        "tokens_counted": "best hypothesis, EOS included", "timing": "median (min-max) over repeats",
        "speedup": "over the first row, median (min-max) of the per-repeat ratios",
    }  # fmt: skip


def run_latency(args, models: List[Model], notes: List[str]) -> Tuple[List[Dict], List[str]]:
    """``--latency``: every row at batch size 1 on the run's first ``--latency-sentences`` sentences;
    the records and the markdown lines."""
    rows = make_rows(args, models, 1, args.beam, notes, max_sentences=args.latency_sentences)
    records = latency_records(rows, time_latency(rows, args.repeats, args.warmup, args.out_len, args.device))
    n = len(rows[0].batches)
    head = f"Latency, batch size 1 (ms per sentence over {n} sentences x {args.repeats} repeats):"
    return records, ["", head, "", tables.latency_table(records)]


def run_table(args, setting: Dict, notes: List[str], mem_method: str, peaks: Dict) -> Tuple[Dict, List[str]]:
    """The side-by-side table, the roofline table (and with ``--profile`` the profile and the gap split,
    with ``--latency`` the latency table): the results' ``rows`` (and ``latency``) and the markdown lines."""
    models = load_models(args, notes)
    rows, records = measure(args, models, args.batch_size, args.beam, notes, peaks)
    setting["sentences"] = rows[0].sentences
    batches = len(rows[0].batches)
    md = [tables.setting_line(setting), "", tables.speed_table(records), "", f"Peak memory: {mem_method}."]
    md += ["", tables.peaks_line(peaks), "", tables.roofline_table(records, batches)]
    if args.profile:
        md += [
            "",
            f"Time per module, ms per batch of {args.batch_size} (share of total):",
            "",
            tables.profile_table(records, batches),
            "",
            tables.GAP_HEADING,
            "",
            tables.gap_table(records, batches),
        ]
    if args.floor:
        md += ["", tables.FLOOR_HEADING, "", tables.floor_table(records, batches)]
    part = {"peaks": peaks, "rows": records}
    if args.latency:
        part["latency"], lines = run_latency(args, models, notes)
        md += lines
    return part, md


def sweep_paths(args) -> Tuple[str, str]:
    """(CSV, plot) paths of a sweep: ``--out-csv``/``--out-png``, else ``sweep_KIND.csv``/``.png`` next to
    ``--out-md``/``--out-json`` (or in the current folder)."""
    base = os.path.dirname(args.out_md or args.out_json or "") or "."
    csv_path = args.out_csv or os.path.join(base, f"sweep_{args.sweep}.csv")
    return csv_path, args.out_png or os.path.splitext(csv_path)[0] + ".png"


def run_sweep(args, setting: Dict, notes: List[str], peaks: Dict) -> Tuple[Dict, List[str]]:
    """The measurement at each ``--sweep-values`` value (batch size, beam, source length, or target
    vocabulary: new models); the results' ``sweep`` and the markdown lines.  Writes the CSV and the plot."""
    models = load_models(args, notes) if args.sweep != "bpe" else None
    if args.sweep == "batch" and not args.num_sentences:
        args.num_sentences = 2 * max(args.sweep_values)  # the same sentences at every batch size
    points = []
    for value in args.sweep_values:
        logger.info("--sweep %s: %s", args.sweep, value)
        batch_size = value if args.sweep == "batch" else args.batch_size
        beam = value if args.sweep == "beam" else args.beam
        swept = models if models is not None else load_models(args, notes, tgt_vocab=value)
        src_len = value if args.sweep == "srclen" else None
        rows, records = measure(args, swept, batch_size, beam, notes, peaks, src_len)
        setting["sentences"] = rows[0].sentences
        points += tables.sweep_points(value, records)
    csv_path, png_path = sweep_paths(args)
    tables.write_sweep_csv(points, args.sweep, csv_path)
    tables.plot_sweep(points, args.sweep, png_path)
    md = [
        tables.setting_line({**setting, args.sweep: "swept"}),
        "",
        "sent/s (speedup over the first row):",
        "",
        tables.sweep_table(points, args.sweep, args.sweep_values),
        "",
        f"CSV: {csv_path}; plot: {png_path}",
    ]
    sweep = {"kind": args.sweep, "values": args.sweep_values, "points": points, "csv": csv_path, "png": png_path}
    return {"peaks": peaks, "sweep": sweep}, md


def run_args(args) -> Dict:
    """Run the benchmark that the checked ``args`` (:func:`~.options.parse_args`) describe: print the
    markdown, write ``--out-md``/``--out-json`` atomically, return the results."""
    torch.set_num_threads(args.threads)
    setting = make_setting(args)
    notes: List[str] = []
    mem_method = PeakMemory(args.device).method
    peaks: Dict = {}
    if args.sweep:
        part, md = run_sweep(args, setting, notes, peaks)
    else:
        part, md = run_table(args, setting, notes, mem_method, peaks)
    notes = list(dict.fromkeys(notes))
    if notes:
        md += [""] + [f"Note: {n}" for n in notes]
    result = {"setting": setting, **part, "notes": notes, "memory_method": mem_method}
    text = "\n".join(md) + "\n"
    print(text)
    if args.out_md:
        write_text(args.out_md, text)
    if args.out_json:
        write_json(args.out_json, result)
    return result


def run(argv: Optional[List[str]] = None) -> Dict:
    """Parse ``argv`` (``sys.argv[1:]`` when None), measure, print, write the outputs; the results (what
    ``--out-json`` holds).  Raises :class:`~mdn_fairseq.errors.MDNError` for bad flags or input."""
    return run_args(parse_args(argv))
