"""A student checkpoint initialised from a teacher, outside fairseq-train (what ``mdn-init`` does).

:func:`init_student` builds the student as ``fairseq-train --task translation_wd`` would (same flags,
same dictionaries) and initialises it from the teacher with the task's own weight distillation;
:func:`student_checkpoint` wraps it as a fairseq checkpoint that ``fairseq-train --finetune-from-model``
and ``fairseq-generate --path`` accept.
"""

import os
from typing import Optional, Sequence, Tuple

from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import OmegaConf

from ..checkpoint import load_checkpoint
from ..errors import DistillationError, MDNError
from .heads import head_flags
from .weights import Mapping


def teacher_task_cfg(path: str) -> dict:
    """The task settings a fairseq checkpoint was trained with (``data``, ``source_lang``, ...), as a
    plain dict (empty when it holds none).  Raises :class:`DistillationError` when ``path`` is missing
    or not a checkpoint."""
    if not os.path.isfile(path):
        raise DistillationError(f"--teacher {path}: no such file")
    try:
        state = load_checkpoint(path)
    except MDNError:
        raise
    except Exception as err:
        raise DistillationError(f"--teacher {path}: cannot read the checkpoint ({err})") from err
    cfg = state.get("cfg") or {}
    task = cfg.get("task") if isinstance(cfg, dict) else None
    if task is None and state.get("args") is not None:
        task = vars(state["args"])
    return dict(task or {})


def init_student(
    teacher: str,
    arch: str,
    head_cfg,
    data: Optional[str] = None,
    source_lang: Optional[str] = None,
    target_lang: Optional[str] = None,
    model_flags: Sequence[str] = (),
) -> Tuple[object, object, Mapping]:
    """Build ``--arch arch`` (with fairseq ``model_flags`` such as ``--encoder-layers 12``) on the teacher's
    dictionaries and initialise it from the teacher checkpoint ``teacher``; ``head_cfg`` holds the
    :class:`~mdn_fairseq.distillation.heads.WDHeadConfig` choices.  ``data`` defaults to the teacher's
    binarised data folder.  Returns ``(model, cfg, mapping)``: the student, its fairseq config and what was
    mapped.  Raises :class:`DistillationError` (or another :class:`MDNError`) for a missing teacher or
    data folder and for a student the teacher cannot initialise."""
    task_cfg = teacher_task_cfg(teacher)
    data = data or task_cfg.get("data")
    if not data or not os.path.isdir(str(data).split(os.pathsep)[0]):
        raise DistillationError(
            f"the teacher's data folder {data!r} is not here: pass --data DATA-BIN (its dictionaries)"
        )
    src, tgt = source_lang or task_cfg.get("source_lang"), target_lang or task_cfg.get("target_lang")
    argv = [str(data), "--task", "translation_wd", "--teacher-path", teacher, "--no-wd-init", "--arch", arch]
    argv += head_flags(head_cfg) + (["--source-lang", src] if src else []) + (["--target-lang", tgt] if tgt else [])
    args = options.parse_args_and_arch(options.get_training_parser(), argv + list(model_flags))
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)  # loads the teacher (--no-wd-init: initialised below)
    return model, cfg, task.initialise_from_teacher(model)


def student_checkpoint(model, cfg) -> dict:
    """A fairseq checkpoint (a dict for ``torch.save``) holding ``model``'s weights and the config
    ``cfg`` to rebuild it, at epoch 1 and update 0 with no optimizer state."""
    return {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model.state_dict(),
        "optimizer_history": [
            {
                "criterion_name": "KDCrossEntropyCriterion",
                "optimizer_name": "none",
                "lr_scheduler_state": {"best": None},
                "num_updates": 0,
            }
        ],
        "extra_state": {"train_iterator": {"epoch": 1}, "val_loss": None},
    }
