"""``mdn-seqkd``: sequence-level knowledge distillation data (Kim & Rush 2016), as the MDN authors trained.

    mdn-seqkd --teacher T.pt --data DATA-BIN --out DISTILLED [--beam 4] [--batch-size 64] [--with-original]

Translates the training set with the teacher (beam search, batched), writes the distilled corpus as
text (``OUT/text/train.{src,tgt}``, BPE tokens as in the binarised data) and binarises it with the
teacher's dictionaries into ``OUT/bin`` (valid/test copied from DATA-BIN), ready for
``fairseq-train OUT/bin``.  ``--with-original`` trains on original + distilled pairs (the authors'
setting).  Resumable: translations are written in chunks of ``--chunk-batches`` batches, each
atomically, and a re-run skips the chunks whose outputs are already there.
"""

import os
from dataclasses import fields

from ..distillation.sequence_kd import SeqKDOptions, distil_corpus
from .common import CLIError, parser, run

PROG = "mdn-seqkd"


def body(argv):
    """Parse ``argv``, run, report; bad input raises :class:`~mdn_fairseq.errors.MDNError`."""
    p = parser(PROG, __doc__)
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--data", required=True, help="binarised data (the teacher's dictionaries)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--subset", default="train", help="the split the teacher translates (default train)")
    p.add_argument("-s", "--source-lang")
    p.add_argument("-t", "--target-lang")
    p.add_argument("--beam", type=int, default=4, help="beam size (default 4, the paper's)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch")
    p.add_argument("--max-len-a", type=float, default=1.2, help="max length a*src_len+b: a (default 1.2)")
    p.add_argument("--max-len-b", type=int, default=10, help="max length a*src_len+b: b (default 10)")
    p.add_argument("--lenpen", type=float, default=1.0, help="length penalty (default 1.0, fairseq's)")
    p.add_argument("--chunk-batches", type=int, default=50, help="batches per resumable chunk")
    p.add_argument("--with-original", action="store_true", help="also keep the original pairs")
    p.add_argument("--cpu", action="store_true", help="translate on CPU even when CUDA is there")
    p.add_argument("--fp16", action="store_true", help="translate in half precision (GPU)")
    args = p.parse_args(argv)
    for path, flag in ((args.teacher, "--teacher"), (args.data, "--data")):
        if not os.path.exists(path):
            raise CLIError(f"{flag} {path}: no such file or folder")
    for flag in ("beam", "batch_size", "chunk_batches"):
        if getattr(args, flag) < 1:
            raise CLIError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
    opts = SeqKDOptions(**{f.name: getattr(args, f.name) for f in fields(SeqKDOptions)})
    _, _, bin_dir = distil_corpus(
        args.teacher, args.data, args.out, opts, log=lambda m: print(f"{PROG}: {m}", flush=True)
    )
    print(f"{PROG}: binarised into {bin_dir}")


def main(argv=None):
    """The ``mdn-seqkd`` console script: ``argv`` (default ``sys.argv[1:]``); bad input exits 2 with ``mdn-seqkd: message``."""
    run(PROG, body, argv)


if __name__ == "__main__":
    main()
