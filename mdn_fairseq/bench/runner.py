"""One ``mdn-bench`` run: the models, their rows, the measurement, the tables and the files.

:func:`run` takes the command line and returns what ``--out-json`` holds: ``setting`` (hardware, torch,
every knob), ``rows`` (:func:`~.measure.row_records`) or, with ``--sweep``, ``sweep`` (its points, CSV
and plot paths), ``notes`` (rows left out and why) and ``memory_method``.
"""

import logging
import os
import platform
from typing import Dict, List, Optional, Tuple

import torch

from ..fast_generator import decoder_unsupported_reason
from ..files import write_json, write_text
from . import tables
from .inputs import make_batches, random_sentences, read_sentences
from .measure import PeakMemory, Row, build_generator, hardware, row_records, time_rows
from .models import Model, checkpoint_models, int8_variants, synthetic_models, to_device
from .options import parse_args
from .profile import profile_row

logger = logging.getLogger("mdn_fairseq.bench")


def load_models(args, tgt_vocab: Optional[int] = None) -> List[Model]:
    """The run's models (``--synthetic`` or ``--path``), their int8 variants with ``--int8``, on the device;
    ``tgt_vocab`` overrides ``--tgt-vocab`` (the bpe sweep)."""
    if args.synthetic:
        models = synthetic_models(args.archs, args.src_vocab, tgt_vocab or args.tgt_vocab, args.seed)
    else:
        models = checkpoint_models(args.path, args.data, args.input, args.name)
    if args.int8:
        models += int8_variants(models)
    to_device(models, args.device, args.fp16)
    return models


def make_rows(args, models: List[Model], batch_size: int, beam: int, notes: List[str]) -> List[Row]:
    """A row per model and ``--generator``, all models on the same sentences; a model the fast generator
    cannot run gets no fast row (the reason goes to ``notes``)."""
    if args.synthetic:
        vocab = min(len(m.src_dict) for m in models)
        shared = random_sentences(args.num_sentences or 2 * batch_size, vocab, seed=args.seed)
    rows = []
    for m in models:
        sentences = shared if args.synthetic else read_sentences(m.input, m.src_dict)
        batches = make_batches(sentences, batch_size, m.src_dict.pad(), m.src_dict.eos())
        if args.device == "cuda":
            from fairseq import utils

            batches = [utils.move_to_cuda(b) for b in batches]
        for kind in args.generators:
            reason = decoder_unsupported_reason(m.model) if kind == "fast" else None
            if reason is not None:
                notes.append(f"{m.name}: no fast row ({reason})")
                continue
            gen = build_generator(kind, m, beam, args.out_len, args.max_len_a, args.max_len_b)
            if kind == "fast" and gen.encoder_fallback_reason is not None:
                notes.append(f"{m.name} · fast: the encoder runs its own forward ({gen.encoder_fallback_reason})")
            rows.append(Row(m, kind, gen, batches))
    return rows


def measure(args, models: List[Model], batch_size: int, beam: int, notes: List[str]) -> List[Row]:
    """The rows of ``models`` timed side by side (and profiled with ``--profile``)."""
    rows = make_rows(args, models, batch_size, beam, notes)
    time_rows(rows, args.repeats, args.warmup, args.out_len, args.device)
    if args.profile:
        for row in rows:
            row.profile = profile_row(row, args.out_len, args.device)
    return rows


def make_setting(args) -> Dict:
    """Everything that decides the numbers, for the JSON and the setting line."""
    fixed = args.out_len is not None
    return {
        "hardware": hardware(args.device), "device": args.device, "fp16": args.fp16, "threads": args.threads,
        "batch": args.batch_size, "beam": args.beam, "out_len": args.out_len,
        "max_len_a": None if fixed else args.max_len_a, "max_len_b": None if fixed else args.max_len_b,
        "repeats": args.repeats, "warmup": args.warmup, "seed": args.seed, "generators": args.generators,
        "int8": args.int8, "torch": torch.__version__, "python": platform.python_version(),
        "models": args.synthetic or args.path, "input": args.input or "random token ids, 20-30 tokens",
        "tokens_counted": "best hypothesis, EOS included", "timing": "median (min-max) over repeats",
        "speedup": "over the first row, median (min-max) of the per-repeat ratios",
    }  # fmt: skip


def run_table(args, setting: Dict, notes: List[str], mem_method: str) -> Tuple[Dict, List[str]]:
    """The side-by-side table (and the profile table): the results' ``rows`` and the markdown lines."""
    rows = measure(args, load_models(args), args.batch_size, args.beam, notes)
    setting["sentences"] = rows[0].sentences
    records = row_records(rows)
    md = [tables.setting_line(setting), "", tables.speed_table(records), "", f"Peak memory: {mem_method}."]
    if args.profile:
        md += [
            "",
            f"Time per module, ms per batch of {args.batch_size} (share of total):",
            "",
            tables.profile_table(records, len(rows[0].batches)),
        ]
    return {"rows": records}, md


def sweep_paths(args) -> Tuple[str, str]:
    """(CSV, plot) paths of a sweep: ``--out-csv``/``--out-png``, else ``sweep_KIND.csv``/``.png`` next to
    ``--out-md``/``--out-json`` (or in the current folder)."""
    base = os.path.dirname(args.out_md or args.out_json or "") or "."
    csv_path = args.out_csv or os.path.join(base, f"sweep_{args.sweep}.csv")
    return csv_path, args.out_png or os.path.splitext(csv_path)[0] + ".png"


def run_sweep(args, setting: Dict, notes: List[str]) -> Tuple[Dict, List[str]]:
    """The measurement at each ``--sweep-values`` value (batch size, beam, or target vocabulary: new
    models); the results' ``sweep`` and the markdown lines.  Writes the CSV and the plot."""
    models = load_models(args) if args.sweep != "bpe" else None
    if args.sweep == "batch" and not args.num_sentences:
        args.num_sentences = 2 * max(args.sweep_values)  # the same sentences at every batch size
    points = []
    for value in args.sweep_values:
        logger.info("--sweep %s: %s", args.sweep, value)
        batch_size = value if args.sweep == "batch" else args.batch_size
        beam = value if args.sweep == "beam" else args.beam
        swept = models if models is not None else load_models(args, tgt_vocab=value)
        rows = measure(args, swept, batch_size, beam, notes)
        setting["sentences"] = rows[0].sentences
        points += tables.sweep_points(value, row_records(rows))
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
    return {"sweep": sweep}, md


def run_args(args) -> Dict:
    """Run the benchmark that the checked ``args`` (:func:`~.options.parse_args`) describe: print the
    markdown, write ``--out-md``/``--out-json`` atomically, return the results."""
    torch.set_num_threads(args.threads)
    setting = make_setting(args)
    notes: List[str] = []
    mem_method = PeakMemory(args.device).method
    if args.sweep:
        part, md = run_sweep(args, setting, notes)
    else:
        part, md = run_table(args, setting, notes, mem_method)
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
