"""The recipe's bookkeeping as a library: training state of a checkpoint, BLEU of a translation, the scores
and test sets of a work folder (:mod:`.scores`), and the results tables of ``scripts/reproduce.sh`` and
``scripts/training_strategies.sh`` (:mod:`.tables`).  The ``mdn-report`` CLI (:mod:`mdn_fairseq.cli.report`)
is a thin layer over it.  Everything public is importable from here (``from mdn_fairseq import report``), as
are the helpers other tables reuse (``_load_json``, ``_ratio``, ``_speed``, ``_speed_cells``,
``_times``).
"""

from .scores import (
    ReportError,
    _load_json,  # noqa: F401
    count_params,
    count_state_params,
    parse_generate,
    prepared_test_sets,
    read_config,
    read_lines,
    read_scores,
    sacrebleu_score,
    score,
    test_sets,
    training_done,
    training_state,
)
from .tables import (
    MISSING,
    OURS_ROWS,
    PEER_ROWS,
    ROWS,
    STRATEGY_ROWS,
    _ratio,  # noqa: F401
    _speed,  # noqa: F401
    _speed_cells,  # noqa: F401
    _times,  # noqa: F401
    bleu_cells,
    bleu_fields,
    bleu_head,
    build_strategies,
    build_table,
    data_lines,
    fmt,
    missing_notes,
)

__all__ = [
    "MISSING",
    "OURS_ROWS",
    "PEER_ROWS",
    "ROWS",
    "STRATEGY_ROWS",
    "ReportError",
    "bleu_cells",
    "bleu_fields",
    "bleu_head",
    "build_strategies",
    "build_table",
    "count_params",
    "count_state_params",
    "data_lines",
    "fmt",
    "missing_notes",
    "parse_generate",
    "prepared_test_sets",
    "read_config",
    "read_lines",
    "read_scores",
    "sacrebleu_score",
    "score",
    "test_sets",
    "training_done",
    "training_state",
]
