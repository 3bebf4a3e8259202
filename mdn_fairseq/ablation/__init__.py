"""The paper's ablations as a library: Table 2 (each structure trick alone), Table 5 (the tricks added one
after another) and Fig. 1's BLEU half (target BPE merges against BLEU and speed), for ``scripts/ablation.sh``.

- :mod:`.plan`: the rows of both tables from a task config (each trick is a config variable holding model
  flags), every row's model checked up front with fairseq's parser and the architecture functions, and rows
  that are the same training (same model, data and recipe) folded into one, also with ``reproduce.sh``'s.
- :mod:`.tables`: ``ablation.md``/``ablation.json`` from the work folder (BLEU per evaluation set, CPU speed).
- :mod:`.sweep`: the ``--bpe-sweep`` configs (one per target merge count) and its CSV, table and plot.

The ``mdn-report ablation`` CLI (:mod:`mdn_fairseq.cli.report_ablation`) is a thin layer over it.
"""

from .plan import TABLES, AblationError, Row, Training, bash_lines, build_plan, parse_tables, resolve_model, suffix
from .sweep import build_sweep, parse_merges, sweep_config_text, write_sweep_configs
from .tables import bench_path, build_tables, plan_path

__all__ = [
    "TABLES",
    "AblationError",
    "Row",
    "Training",
    "bash_lines",
    "bench_path",
    "build_plan",
    "build_sweep",
    "build_tables",
    "parse_merges",
    "parse_tables",
    "plan_path",
    "resolve_model",
    "suffix",
    "sweep_config_text",
    "write_sweep_configs",
]
