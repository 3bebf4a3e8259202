"""``mdn-report ablation``: the bookkeeping of ``scripts/ablation.sh`` (the paper's Tables 2, 5 and Fig. 1).

    mdn-report ablation plan --config configs/TASK.sh --out WORK/ablation/plan.json   # check rows, list trainings
    mdn-report ablation plan --config configs/TASK.sh --tables 2 --out ...            # Table 2 alone
    mdn-report ablation table --work WORK --config configs/TASK.sh --out-md A.md --out-json A.json
    mdn-report ablation table --work WORK --config configs/TASK.sh --tables 2 --out-md A2.md --out-json A2.json
    mdn-report ablation sweep-configs --config configs/TASK.sh --merges 2000,4000 --current 2000 --out-dir DIR
    mdn-report ablation sweep --work WORK --point 2000=bpe10k --point 4000=sweep_tgt4000 --out-csv S.csv

``plan`` checks every row's model with fairseq's parser and the architecture functions (a bad flag fails
here, before any training) and prints one line per training for the script; ``table`` writes the tables
(:func:`mdn_fairseq.ablation.build_tables`); ``sweep-configs`` writes one config per target merge count and
``sweep`` the CSV, markdown and PNG of the sweep.
"""

import argparse
import json
import os

from .. import ablation
from ..ablation import sweep
from ..files import write_json, write_text
from ..report import read_config
from .common import CLIError

COMMAND = "ablation"


def add_parser(sub):
    """Add ``ablation`` and its actions to ``mdn-report``'s subparsers ``sub``."""
    a = sub.add_parser(
        COMMAND,
        help="Tables 2, 5 and Fig. 1 of scripts/ablation.sh",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = a.add_subparsers(dest="action", required=True)
    p = actions.add_parser("plan", help="check every row's model, write the plan, print one line per training")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="the plan (JSON)")
    p.add_argument("--tables", default="2,5", help="2, 5 or 2,5 (default): the tables whose rows are planned")
    t = actions.add_parser("table", help="ablation.md/.json of an ablation.sh work folder")
    t.add_argument("--work", required=True)
    t.add_argument("--config", required=True)
    t.add_argument("--tables", default="2,5", help="2, 5 or 2,5 (default): the tables of the ablation.sh run")
    t.add_argument("--plan", help="the plan (default: that run's, WORK/ablation/plan.json or plan_table2.json, ...)")
    t.add_argument("--out-md", required=True)
    t.add_argument("--out-json", required=True)
    t.add_argument("--command", default="", help="the command that made it (written into the markdown)")
    c = actions.add_parser("sweep-configs", help="one config per target merge count (--bpe-sweep)")
    c.add_argument("--config", required=True)
    c.add_argument("--merges", required=True, help="comma list of target merge counts")
    c.add_argument("--current", type=int, required=True, help="the config's own count (no config written)")
    c.add_argument("--out-dir", required=True)
    s = actions.add_parser("sweep", help="CSV, markdown and PNG of a --bpe-sweep")
    s.add_argument("--work", required=True)
    s.add_argument("--point", action="append", required=True, metavar="MERGES=KEY", help="repeatable")
    s.add_argument("--out-csv", required=True)
    s.add_argument("--out-md")
    s.add_argument("--out-png")
    s.add_argument("--command", default="")


def body(args):
    """Run the ``ablation`` action of the parsed ``args``; bad input raises an MDNError."""
    if args.action == "plan":
        tables = ablation.parse_tables(args.tables)
        plan = ablation.build_plan(read_config(args.config), args.config, tables)
        write_json(args.out, plan, keep_unchanged=True)
        print("\n".join(ablation.bash_lines(plan)))
    elif args.action == "table":
        tables = ablation.parse_tables(args.tables)
        plan_path = args.plan or ablation.plan_path(args.work, tables)
        if not os.path.isfile(plan_path):
            raise CLIError(
                f"--plan {plan_path}: no such file; run scripts/ablation.sh --tables {args.tables} (its check stage) first"
            )
        with open(plan_path, encoding="utf-8") as f:
            plan = json.load(f)
        made = tuple(plan.get("tables", ablation.TABLES))
        if made != tables:
            raise CLIError(
                f"--plan {plan_path} is for --tables {','.join(map(str, made))}, not --tables {args.tables}: pass "
                f"--tables {','.join(map(str, made))}, or run scripts/ablation.sh --tables {args.tables} first"
            )
        md, result = ablation.build_tables(args.work, read_config(args.config), plan, args.command)
        write_json(args.out_json, result)
        write_text(args.out_md, md)
        print(md)
    elif args.action == "sweep-configs":
        merges = sweep.parse_merges(args.merges)
        for n, path in sweep.write_sweep_configs(args.config, merges, args.current, args.out_dir).items():
            print(f"{n} {path}")
    else:
        points = {}
        for item in args.point:
            n, _, key = item.partition("=")
            if not n.isdigit() or not key:
                raise CLIError(f"--point {item!r}: expected MERGES=KEY, e.g. 4000=sweep_tgt4000")
            points[int(n)] = key
        md, rows = sweep.build_sweep(args.work, points, args.command)
        sweep.write_csv(rows, args.out_csv)
        if args.out_md:
            write_text(args.out_md, md)
        print(md)
        if args.out_png:
            missing = sweep.plot(rows, args.out_png)
            print(missing or f"plot: {args.out_png}")
    return 0
