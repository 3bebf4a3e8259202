"""mdn-prepare's library: raw parallel text -> checked text, Moses tokens, BPE and fairseq binaries.

- :mod:`.config`: the task configs (``configs/TASK.sh``; the shipped ones are package data), :class:`TaskConfig`;
- :mod:`.text`: reading and checking line-aligned text, empty pairs, the length filter;
- :mod:`.tokenise`: Moses tokenisation (the tokeniser settings: :data:`~.tokenise.MOSES_OPTIONS`), BPE,
  the worker processes;
- :mod:`.download`: finding the input, Multi30k and WMT14 downloads, checksums;
- :mod:`.staged`, :mod:`.pipeline`, :mod:`.stages`: staged writes, the run over a WORK folder, each stage.

The console script is :mod:`mdn_fairseq.cli.prepare`.  Nothing here imports torch or fairseq
(``fairseq-preprocess`` runs in a subprocess).
"""

from .config import (
    BpeSetting,
    PrepareError,
    TaskConfig,
    config_path_for_task,
    known_tasks,
    load_config,
    read_config,
    shipped_configs,
)
from .pipeline import Preparation
from .tokenise import MOSES_OPTIONS, tokenizer_settings

__all__ = [
    "MOSES_OPTIONS",
    "BpeSetting",
    "PrepareError",
    "Preparation",
    "TaskConfig",
    "config_path_for_task",
    "known_tasks",
    "load_config",
    "read_config",
    "shipped_configs",
    "tokenizer_settings",
]
