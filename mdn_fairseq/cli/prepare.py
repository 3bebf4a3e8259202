"""``mdn-prepare``: raw parallel text -> checked text, Moses tokens, BPE and fairseq binaries for one task.

    mdn-prepare --task TASK --work WORK [--data DIR] [--quick] [--workers N]
    mdn-prepare --config FILE --work WORK ...     (your own settings, in the format of configs/TASK.sh)

The task's settings (languages, file stems, BPE merges, length filter) come from its config; the shipped
ones (--task) install with the package.  The text is read from --data DIR, else from the config's DATA
folder; what the folder lacks is downloaded into WORK/download (the config's DOWNLOAD: Multi30k file by
file, checksummed; WMT14 whole, when there is no folder).  A config may name several test sets
(SPLITS test=MAIN,EXTRA,...): the extra ones become subsets test1, test2, ...; one that is neither local
nor downloadable is reported, recorded missing in prepare.json and left out (the main one must be there).
Written under WORK:

    raw/{train,valid,test}.{SRC,TGT}   checked text, empty pairs removed (raw/test.TGT: the sacreBLEU
                                       reference; extra references: raw/{split}.TGT.ref1, .ref2, ...;
                                       extra test sets: raw/test1.*, test2.*, ..., likewise below)
    tok/{split}.{SRC,TGT}              Moses-tokenised (Chinese: jieba-segmented first)
    baseline/, mdn/                    one BPE setting each:
        codes.joint | codes.SRC, codes.TGT   subword-nmt codes
        {split}.{SRC,TGT}                   BPE text (train: length-filtered in subwords, ratio in words)
        bin/                                fairseq-preprocess output (dict.*.txt, *.bin, *.idx)
        preprocess.log
    prepare.json                       settings fingerprint, counts, vocabulary sizes, merges, and
                                       test_sets: [{"subset": "test1", "name": STEM, "missing": ...}, ...]

A stage's files appear together when it succeeds; a re-run skips the stages whose outputs are there (and
refuses a WORK prepared with other settings).  --quick prepares a slice: the first QUICK_TRAIN_LINES
training pairs, the first 200 valid/test pairs, QUICK_*_MERGES merges.
"""

import os

from ..prepare import Preparation, config_path_for_task, known_tasks, load_config
from .common import CLIError, parser, run

PROG = "mdn-prepare"


def body(argv):
    p = parser(PROG, __doc__)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="the task's settings: a file in the format of configs/TASK.sh")
    which.add_argument("--task", help=f"a shipped task config ({', '.join(known_tasks())})")
    p.add_argument("--work", required=True, help="output folder")
    p.add_argument("--data", help="folder with the raw text (default: the config's DATA, else a download)")
    p.add_argument("--quick", action="store_true", help="a small slice with few merges (a smoke test)")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes for tokenisation, BPE and fairseq-preprocess (default: the number of cores)",
    )
    args = p.parse_args(argv)
    if args.workers < 1:
        raise CLIError(f"--workers {args.workers}: must be at least 1")
    cfg = load_config(config_path_for_task(args.task) if args.task else args.config)
    prep = Preparation(cfg, args.work, data=args.data, quick=args.quick, workers=args.workers, out=_say)
    prep.run()


def _say(message: str):
    print(message, flush=True)


def main(argv=None):
    run(PROG, body, argv)


if __name__ == "__main__":
    main()
