"""``mdn-init``: write a student checkpoint initialised from a teacher (weight distillation).

    mdn-init --teacher T.pt --arch mdn --out student.pt [--data DATA-BIN] [--wd-head index|random|best]
             [--wd-head-index K] [--wd-head-seed SEED] [model flags]

The output is a fairseq checkpoint that ``fairseq-train --finetune-from-model student.pt`` and
``fairseq-generate --path student.pt`` accept.  Any fairseq model flag (``--encoder-layers 12``,
``--output-rank 32``, ...) may follow.  The mapping and the energy the rank-E output factors keep are
printed; the file is written atomically.
"""

from ..checkpoint import save_atomically
from ..distillation.heads import add_head_args
from ..distillation.student import init_student, student_checkpoint
from .common import parser, run

PROG = "mdn-init"


def body(argv):
    """Parse ``argv``, run, report; bad input raises :class:`~mdn_fairseq.errors.MDNError`."""
    p = parser(PROG, __doc__)
    p.add_argument("--teacher", required=True, help="teacher checkpoint (fairseq)")
    p.add_argument("--out", required=True, help="student checkpoint to write")
    p.add_argument("--arch", required=True, help="student architecture, e.g. mdn, mdn_wmt_en_de, mdn_tiny")
    p.add_argument("--data", help="binarised data with the teacher's dictionaries (default: the teacher's)")
    p.add_argument("-s", "--source-lang")
    p.add_argument("-t", "--target-lang")
    add_head_args(p)
    args, model_flags = p.parse_known_args(argv)
    model, cfg, mapping = init_student(args.teacher, args.arch, args, args.data, args.source_lang,
                                       args.target_lang, model_flags)  # fmt: skip
    print(f"{PROG}: {args.teacher} -> {args.out} (--arch {args.arch})")
    for line in mapping.lines():
        print("  " + line)
    save_atomically(student_checkpoint(model, cfg), args.out)
    print(f"{PROG}: wrote {args.out} ({sum(p.numel() for p in model.parameters()):,} parameters)")


def main(argv=None):
    """The ``mdn-init`` console script: ``argv`` (default ``sys.argv[1:]``); bad input exits 2 with ``mdn-init: message``."""
    run(PROG, body, argv)


if __name__ == "__main__":
    main()
