"""``mdn-bench``: translation speed of fairseq models, side by side in one process.

    mdn-bench --synthetic transformer,mdn --threads 2 --repeats 3 --profile --out-md table4.md
    mdn-bench --path a.pt --path b.pt --data bin --input test.en --batch-size 64 --beam 4
    mdn-bench --synthetic transformer,mdn --sweep beam --sweep-values 1,2,4,8 --out-md sweep_beam.md
    mdn-bench --synthetic transformer,mdn --int8 --bf16 --ctranslate2 --latency --profile --out-md all.md
    mdn-bench --path a.pt --data bin --input test.en --reference test.de --int8 --bf16   # BLEU per row

The measurement is :mod:`mdn_fairseq.bench` (``--help`` lists every flag); the tables are printed and,
with ``--out-md``/``--out-json`` (and ``--out-csv``/``--out-png`` for a sweep), written atomically.
"""

import logging
import sys

from ..bench import run as run_bench
from .common import run

PROG = "mdn-bench"


def body(argv):
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, stream=sys.stderr
    )
    run_bench(argv)


def main(argv=None):
    """The ``mdn-bench`` console script: exit 2 with ``mdn-bench: message`` for bad flags or input."""
    run(PROG, body, argv)


if __name__ == "__main__":
    main()
