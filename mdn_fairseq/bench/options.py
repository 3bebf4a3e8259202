"""``mdn-bench``'s flags and their checks (as fairseq keeps its parsers in ``fairseq.options``).

Flags that mean what a ``fairseq-generate`` flag means have its name: ``--batch-size`` (``--batch`` is
kept as an alias), ``--beam``, ``--max-len-a``/``--max-len-b``, ``--fp16``, ``--seed``, ``--path``,
``--input`` (as ``fairseq-interactive``'s).  :func:`parse_args` raises :class:`MDNError` naming the flag
for a bad value or combination (argparse itself still exits 2 for an unknown flag).
"""

import argparse
import os
from typing import List, Optional

import torch

from ..errors import MDNError
from .inputs import count_sentences
from .measure import GENERATORS

SWEEP_DEFAULTS = {
    "batch": [1, 8, 16, 32, 64, 128],
    "beam": [1, 2, 4, 8, 16],
    "bpe": [2000, 10000, 20000, 32000],
    "srclen": [10, 25, 50, 100, 200],
}
DESCRIPTION = "Translation speed of fairseq models, side by side in one process."


def _default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _add_model_args(p: argparse.ArgumentParser):
    src = p.add_argument_group("models (one of)")
    src.add_argument(
        "--synthetic",
        metavar="ARCH[,ARCH...]",
        help="random-initialised models of these fairseq architectures, e.g. transformer,mdn",
    )
    src.add_argument("--path", action="append", metavar="CKPT", help="a trained fairseq checkpoint (repeatable)")
    src.add_argument(
        "--data",
        action="append",
        help="--path: the data-bin folder with the checkpoints' dictionaries (once for all, or once "
        "per --path, in the same order)",
    )
    src.add_argument(
        "--input",
        action="append",
        help="--path: text file, one tokenised (BPE'd) source sentence per line (once for all, or once "
        "per --path: models with different BPE read the same sentences in their own segmentation)",
    )
    src.add_argument(
        "--reference",
        metavar="FILE",
        help="--path: reference translations, one per --input sentence, tokenised as the training data "
        "(BPE removed); adds each row's BLEU (tokenised, sacreBLEU with tokenize=none; hypotheses with "
        "'@@ ' BPE removed), so fp32, bf16, int8 and CTranslate2 rows show their quality next to their speed",
    )
    src.add_argument(
        "--name",
        action="append",
        help="--path: row names, once per --path (default: the checkpoint's folder/file name)",
    )
    src.add_argument("--src-vocab", type=int, help="--synthetic: source vocabulary (default 32000)")
    src.add_argument(
        "--tgt-vocab",
        type=int,
        help="--synthetic: target vocabulary of every model (default 10000 for mdn*, else 32000)",
    )


def _add_setting_args(p: argparse.ArgumentParser):
    run = p.add_argument_group("setting")
    run.add_argument(
        "--generator",
        default="fairseq,fast",
        help="generators to run each model with: fairseq (SequenceGenerator), fast (FastSequenceGenerator, "
        "float32 linear layers on oneDNN), fast_torch (FastSequenceGenerator on torch's own F.linear: MKL on x86)",
    )
    run.add_argument(
        "--int8",
        action="store_true",
        help="also run each model with int8 dynamic quantization (approximate; own rows; CPU)",
    )
    run.add_argument(
        "--bf16",
        action="store_true",
        help="also run each model under torch.autocast in reduced precision (bf16 on a CPU with bf16 "
        "instructions, fp16 on CUDA; approximate; own rows)",
    )
    run.add_argument(
        "--ctranslate2",
        action="store_true",
        help="also convert the plain Transformers (and plain equivalents of the other synthetic models) "
        "with CTranslate2's fairseq converter and time them, fp32 and int8 (pip install 'mdn-fairseq[bench]')",
    )
    run.add_argument(
        "--latency",
        action="store_true",
        help="also time every row at batch size 1, one sentence at a time: p50/p95 ms per sentence",
    )
    run.add_argument("--latency-sentences", type=int, default=32, help="--latency: the first N sentences of the run")
    run.add_argument(
        "--peak-size",
        type=int,
        default=2048,
        help="side of the square matrix product that measures the machine's peak (per precision)",
    )
    run.add_argument(
        "--batch-size",
        "--batch",
        dest="batch_size",
        type=int,
        default=64,
        help="sentences per batch (fairseq-generate's --batch-size; --batch is the old spelling)",
    )
    run.add_argument("--beam", type=int, default=4, help="beam size")
    run.add_argument(
        "--out-len",
        type=int,
        help="fixed output length (EOS excluded); default 30 with --synthetic, natural with --path",
    )
    run.add_argument("--max-len-a", type=float, default=0, help="without --out-len: max length a*src_len+b")
    run.add_argument("--max-len-b", type=int, default=200, help="without --out-len: see --max-len-a")
    run.add_argument("--num-sentences", type=int, help="--synthetic: sentences per pass (default 2 x --batch-size)")
    run.add_argument("--repeats", type=int, default=3, help="timed passes over all sentences per row")
    run.add_argument("--warmup", type=int, default=1, help="untimed batches per row first")
    run.add_argument("--seed", type=int, default=1, help="seed of the synthetic weights and sentences")
    run.add_argument(
        "--threads",
        type=int,
        default=_default_threads(),
        help="CPU threads (torch.set_num_threads); default: all cores",
    )
    run.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    run.add_argument("--fp16", action="store_true", help="half precision (with --device cuda)")
    run.add_argument("--profile", action="store_true", help="also time each module group (one extra pass per row)")
    run.add_argument(
        "--floor",
        action="store_true",
        help="also the kernel floor of the fp32 CPU rows: their matrix products, attention and log_softmax "
        "re-timed alone at the recorded shapes (one extra profiled pass per row)",
    )
    run.add_argument(
        "--sweep",
        choices=sorted(SWEEP_DEFAULTS),
        help="repeat over batch sizes, beams, target vocabularies or source lengths (srclen: --synthetic "
        "sentences of exactly that many tokens, EOS included)",
    )
    run.add_argument(
        "--sweep-values",
        help="comma-separated values for --sweep (defaults: "
        + "; ".join(f"{k}: {','.join(map(str, v))}" for k, v in SWEEP_DEFAULTS.items())
        + ")",
    )


def _add_output_args(p: argparse.ArgumentParser):
    out = p.add_argument_group("output")
    out.add_argument("--out-md", help="write the markdown tables here (they are printed too)")
    out.add_argument("--out-json", help="write the results and the full setting here")
    out.add_argument("--out-csv", help="--sweep: CSV (default: sweep_<kind>.csv next to --out-md/--out-json, or here)")
    out.add_argument("--out-png", help="--sweep: plot (default: like --out-csv)")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None or its help already says what the default is."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def get_parser(prog: str = "mdn-bench") -> argparse.ArgumentParser:
    """The argument parser of ``mdn-bench`` (unchecked; :func:`parse_args` checks)."""
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=_DefaultsFormatter)
    _add_model_args(p)
    _add_setting_args(p)
    _add_output_args(p)
    return p


def _check_sources(args):
    if bool(args.synthetic) == bool(args.path):
        raise MDNError("give either --synthetic ARCH[,ARCH...] or --path CKPT (repeatable), not both and not neither")
    if args.path and not (args.data and args.input):
        raise MDNError("--path needs --data DIR (the dictionaries) and --input FILE (one tokenised sentence per line)")
    if args.reference and not args.path:
        raise MDNError("--reference needs --path checkpoints (synthetic models translate random sentences)")
    if args.reference and not os.path.isfile(args.reference):
        raise MDNError(f"--reference {args.reference}: no such file")
    if args.synthetic and args.input:
        raise MDNError(
            "--input is for --path checkpoints; --synthetic draws random sentences (--num-sentences, --seed)"
        )
    args.archs = [a.strip() for a in (args.synthetic or "").split(",") if a.strip()]
    if args.synthetic and not args.archs:
        raise MDNError(f"--synthetic {args.synthetic!r}: give comma-separated architectures, e.g. transformer,mdn")


def _check_numbers(args):
    kinds = [g.strip() for g in args.generator.split(",") if g.strip()]
    if not kinds or any(k not in GENERATORS for k in kinds):
        raise MDNError(f"--generator takes a comma-separated subset of {','.join(GENERATORS)}; got {args.generator!r}")
    args.generators = kinds
    for flag, value in (
        ("--batch-size", args.batch_size),
        ("--beam", args.beam),
        ("--repeats", args.repeats),
        ("--threads", args.threads),
        ("--out-len", args.out_len),
        ("--num-sentences", args.num_sentences),
        ("--latency-sentences", args.latency_sentences),
    ):
        if value is not None and value < 1:
            raise MDNError(f"{flag} {value}: must be >= 1")
    if args.peak_size < 16:
        raise MDNError(f"--peak-size {args.peak_size}: must be >= 16 (a product large enough to time)")
    if args.warmup < 0:
        raise MDNError(f"--warmup {args.warmup}: must be >= 0")
    for flag, value in (("--src-vocab", args.src_vocab), ("--tgt-vocab", args.tgt_vocab)):
        if value is not None and value < 5:
            raise MDNError(f"{flag} {value}: must be >= 5 (fairseq's 4 special symbols and at least one word)")
    if args.synthetic and args.out_len is None:
        args.out_len = 30


def _check_device(args):
    if args.fp16 and args.device != "cuda":
        raise MDNError("--fp16 needs --device cuda (half precision on CPU is slower, not faster)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise MDNError(
            f"--device cuda: CUDA is not available (torch {torch.__version__}, built with CUDA "
            f"{torch.version.cuda}); run on a GPU machine with a CUDA build of torch, or use --device cpu"
        )
    if args.bf16 and args.fp16:
        raise MDNError("--bf16 adds reduced-precision rows to an fp32 run; --fp16 makes the whole run half: use one")
    if args.ctranslate2:
        from .ct2 import require_ctranslate2

        require_ctranslate2()
    if args.int8 and args.device != "cpu":
        raise MDNError(
            "--int8 uses torch's dynamic quantization, which runs on CPU only: drop --int8 or use --device cpu"
        )


def _check_sweep(args):
    if args.sweep == "bpe" and not args.synthetic:
        raise MDNError(
            "--sweep bpe varies the target vocabulary, which needs --synthetic models (a checkpoint's is fixed)"
        )
    if args.sweep == "srclen" and not args.synthetic:
        raise MDNError("--sweep srclen draws random sentences of each length, which needs --synthetic models")
    if args.sweep_values and not args.sweep:
        raise MDNError("--sweep-values needs --sweep batch|beam|bpe|srclen")
    if args.sweep and (args.latency or args.reference or args.floor):
        flag = "--latency" if args.latency else "--reference" if args.reference else "--floor"
        raise MDNError(f"--sweep and {flag} are separate measurements: run them in two commands")
    if not args.sweep:
        return
    try:
        values = [int(v) for v in args.sweep_values.split(",")] if args.sweep_values else SWEEP_DEFAULTS[args.sweep]
    except ValueError:
        raise MDNError(f"--sweep-values takes comma-separated integers; got {args.sweep_values!r}") from None
    low = {"bpe": 5, "srclen": 2}.get(args.sweep, 1)  # srclen: a word and EOS
    if any(v < low for v in values):
        raise MDNError(f"--sweep-values {args.sweep_values}: every {args.sweep} value must be >= {low}")
    args.sweep_values = values


def _check_per_path(args):
    """--data/--input once for all or once per --path; --name once per --path; the same number of sentences."""
    n = len(args.path)
    for opt in ("data", "input", "name"):
        given = getattr(args, opt)
        if given is None:
            continue
        if len(given) == 1 and opt != "name":
            setattr(args, opt, given * n)
        elif len(given) != n:
            raise MDNError(
                f"--{opt} given {len(given)} times for {n} --path checkpoints: give it once per --path"
                + ("" if opt == "name" else " (or once for all)")
            )
    counts = {path: count_sentences(path) for path in dict.fromkeys(args.input)}
    if len(set(counts.values())) > 1:
        raise MDNError(
            "--input files hold different numbers of sentences ("
            + ", ".join(f"{p}: {c}" for p, c in counts.items())
            + "): give every model the same sentences"
        )
    n_refs = count_sentences(args.reference) if args.reference else None
    if n_refs is not None and n_refs != next(iter(counts.values())):
        raise MDNError(
            f"--reference {args.reference}: {n_refs} references for {next(iter(counts.values()))} --input "
            "sentences; give one reference per non-empty --input line"
        )


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Check ``args`` and fill in what follows from them (``archs``, ``generators``, ``out_len``,
    ``sweep_values`` as integers, ``data``/``input`` repeated per ``--path``); raises :class:`MDNError`."""
    _check_sources(args)
    _check_numbers(args)
    _check_device(args)
    _check_sweep(args)
    if args.path:
        _check_per_path(args)
    return args


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse and check ``mdn-bench``'s flags (``sys.argv[1:]`` when ``argv`` is None)."""
    return check_args(get_parser().parse_args(argv))
