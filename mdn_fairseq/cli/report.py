"""``mdn-report``: the recipe's bookkeeping — is a training finished, BLEU of a translation, results table.

    mdn-report done CHECKPOINT --max-epoch N [--max-update M]     # exit 0 when that training is finished
    mdn-report score --generate GEN.txt --ref REF [--ref REF2 ...] --lang de --out scores.json
    mdn-report table --work WORK --config configs/TASK.sh --out-md results.md --out-json results.json [--peers]
    mdn-report strategies --work WORK --config configs/TASK.sh --out-md T.md --out-json T.json
    mdn-report ablation {plan,table,sweep-configs,sweep} ...      # scripts/ablation.sh (Tables 2, 5, Fig. 1)
    mdn-report test-sets --prepared WORK/data     # one line per test set: SUBSET NAME present|missing

``score`` prints the tokenised BLEU fairseq-generate printed and sacreBLEU with its signature
(:func:`mdn_fairseq.report.score`); ``table`` and ``strategies`` gather what the recipe's stages wrote, with
BLEU and sacreBLEU on every test set; ``test-sets`` lists the test sets mdn-prepare prepared (its
prepare.json), the main one first.
"""

import json
import os

from .. import report
from ..files import write_json, write_lines, write_text
from . import report_ablation
from .common import parser, run

PROG = "mdn-report"


def get_parser():
    p = parser(PROG, __doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("done", help="exit 0 when the training of this checkpoint has finished")
    d.add_argument("checkpoint")
    d.add_argument("--max-epoch", type=int, required=True)
    d.add_argument("--max-update", type=int, default=0)
    s = sub.add_parser("score", help="BLEU of a fairseq-generate output")
    s.add_argument("--generate", required=True)
    s.add_argument("--ref", action="append", required=True, help="untokenised reference (repeatable)")
    s.add_argument("--lang", required=True, help="target language (Moses detokeniser)")
    s.add_argument("--out", help="write the scores here (JSON)")
    s.add_argument("--detok-out", help="write the detokenised hypotheses here")
    for name, what in (
        ("table", "results.md/.json (Table 4) of a reproduce.sh work folder"),
        ("strategies", "training_strategies.md/.json (Table 3) of a training_strategies.sh work folder"),
    ):
        t = sub.add_parser(name, help=what)
        t.add_argument("--work", required=True)
        t.add_argument("--config", required=True)
        t.add_argument("--out-md", required=True)
        t.add_argument("--out-json", required=True)
        t.add_argument("--command", default="", help="the command that made it (written into the markdown)")
        if name == "table":
            t.add_argument("--peers", action="store_true", help="with the peer rows and Table 7 (reproduce.sh --peers)")
    report_ablation.add_parser(sub)
    ts = sub.add_parser("test-sets", help="the test sets of an mdn-prepare WORK: SUBSET NAME present|missing")
    ts.add_argument("--prepared", required=True, help="the mdn-prepare WORK (the folder with prepare.json)")
    return p


def _test_sets(prepared: str):
    path = os.path.join(prepared, "prepare.json")
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise report.ReportError(f"--prepared {prepared}: cannot read {path} ({e}); run mdn-prepare first") from e
    for t in report.prepared_test_sets(state):
        print(t["subset"], t["name"], "missing" if t["missing"] else "present")


def body(argv):
    args = get_parser().parse_args(argv)
    if args.cmd == report_ablation.COMMAND:
        return report_ablation.body(args)
    if args.cmd == "done":
        return 0 if report.training_done(args.checkpoint, args.max_epoch, args.max_update) else 1
    if args.cmd == "test-sets":
        return _test_sets(args.prepared)
    if args.cmd == "score":
        result = report.score(args.generate, args.ref, args.lang)
        if args.detok_out:
            write_lines(args.detok_out, result["detokenised"])
        del result["detokenised"]
        if args.out:
            write_json(args.out, result)
        print(
            f"tokenised BLEU {report.fmt(result['tok_bleu'])}, sacreBLEU {result['sacrebleu']:.2f} "
            f"({result['sacrebleu_signature']}), {result['sentences']} sentences"
        )
        return 0
    build = report.build_table if args.cmd == "table" else report.build_strategies
    extra = {"peers": args.peers} if args.cmd == "table" else {}
    md, result = build(args.work, report.read_config(args.config), args.command, **extra)
    write_json(args.out_json, result)
    write_text(args.out_md, md)
    print(md)
    return 0


def main(argv=None):
    run(PROG, body, argv)


if __name__ == "__main__":
    main()
