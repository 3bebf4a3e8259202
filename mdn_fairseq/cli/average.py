"""``mdn-average``: average the parameters of the last N epoch checkpoints (the paper evaluates so).

    mdn-average --inputs CHECKPOINT_DIR --last 5 --output avg.pt
    mdn-average --inputs a.pt b.pt c.pt --output avg.pt

fairseq's own ``scripts/average_checkpoints.py`` is not part of its pip package, so the recipes use
this one.  Checkpoints are read weights-only with the allow-list of what fairseq checkpoints hold;
floating-point tensors are averaged in float64, other tensors must agree.  The output keeps the
newest checkpoint's config and training state, without its optimizer state, and is written atomically
(:mod:`mdn_fairseq.checkpoint`).
"""

import os

from ..checkpoint import average_checkpoints, last_epoch_checkpoints, save_atomically
from .common import CLIError, parser, run

PROG = "mdn-average"


def body(argv):
    p = parser(PROG, __doc__)
    p.add_argument(
        "--inputs",
        nargs="+",
        required=True,
        help="a checkpoint folder (its last --last epoch checkpoints) or checkpoint files",
    )
    p.add_argument("--last", type=int, default=5, help="with a folder: how many epoch checkpoints (default 5)")
    p.add_argument("--output", required=True, help="the averaged checkpoint to write")
    args = p.parse_args(argv)
    if args.last < 1:
        raise CLIError(f"--last {args.last}: must be >= 1")
    if len(args.inputs) == 1 and os.path.isdir(args.inputs[0]):
        paths = last_epoch_checkpoints(args.inputs[0], args.last)
        if len(paths) < args.last:
            print(f"{PROG}: warning: --last {args.last} but {args.inputs[0]} has {len(paths)} epoch checkpoint(s)")
    else:
        paths = args.inputs
    save_atomically(average_checkpoints(paths), args.output)
    print(f"{PROG}: {args.output} = mean of {len(paths)} checkpoints: " + ", ".join(os.path.basename(p) for p in paths))


def main(argv=None):
    run(PROG, body, argv)


if __name__ == "__main__":
    main()
