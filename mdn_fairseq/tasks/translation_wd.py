"""``translation_wd``: translation with a teacher, for weight distillation and word-level KD.

The MDN of Lin et al. (2021), "Bag of Tricks for Optimizing Transformer Efficiency", is trained from a
Transformer teacher: initialised from its weights (weight distillation,
:mod:`mdn_fairseq.distillation.weights`) and, optionally, taught by its distributions
(``--criterion kd_cross_entropy``).  The student is initialised from ``--teacher-path`` when training
starts fresh; when fairseq-train will restore a checkpoint (``checkpoint_last.pt`` when resuming,
``--restore-file``, ``--finetune-from-model``), it is not (the same rule as
``checkpoint_utils.load_checkpoint``).  The teacher stays on the task — loaded once per process/rank,
``eval()``, no gradients, moved to the student's device and dtype on first use — so it is neither saved
in student checkpoints nor seen by the optimizer.  ``kd_cross_entropy`` takes its distributions from
here.  Loading a student checkpoint (``fairseq-generate``) never loads the teacher.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

from fairseq import checkpoint_utils
from fairseq.data import Dictionary
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from ..distillation.heads import WDHeadConfig, choose_head, head_losses
from ..distillation.weights import Mapping, distill_state_dict
from ..errors import DistillationError
from .translation_mdn import TranslationMDNConfig, TranslationMDNTask

logger = logging.getLogger(__name__)


@dataclass
class TranslationWDConfig(TranslationMDNConfig, WDHeadConfig):
    """``translation_mdn``'s settings, the teacher-head flags (:class:`WDHeadConfig`) and the teacher's."""

    teacher_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "teacher checkpoint: initialises the student (weight distillation) and gives "
            "--criterion kd_cross_entropy its distributions"
        },
    )
    no_wd_init: bool = field(
        default=False, metadata={"help": "keep the teacher for KD but do not initialise the student from it"}
    )
    # where fairseq-train will restore from (to initialise only fresh runs); set by --save-dir etc.
    save_dir: Optional[str] = II("checkpoint.save_dir")
    restore_file: Optional[str] = II("checkpoint.restore_file")
    checkpoint_suffix: Optional[str] = II("checkpoint.checkpoint_suffix")
    finetune_from_model: Optional[str] = II("checkpoint.finetune_from_model")
    continue_once: Optional[str] = II("checkpoint.continue_once")


def checkpoint_to_restore(save_dir, restore_file, suffix="", finetune_from_model=None, continue_once=None):
    """The path of the checkpoint fairseq-train will load over the freshly built model, or None
    (fairseq's rule, ``checkpoint_utils.load_checkpoint``); unresolved ``${...}`` values count as unset."""

    def given(value):
        return value if isinstance(value, str) and value and not value.startswith("${") else None

    save_dir, restore_file, suffix = given(save_dir), given(restore_file), given(suffix) or ""
    if restore_file is None:
        return None
    if restore_file == "checkpoint_last.pt":
        last = os.path.join(save_dir or ".", f"checkpoint_last{suffix}.pt")
        if os.path.exists(last):
            return last
        return next((p for p in (given(continue_once), given(finetune_from_model)) if p and os.path.exists(p)), None)
    path = restore_file.replace(".pt", suffix + ".pt") if suffix else restore_file
    return path if os.path.exists(path) else None


@register_task("translation_wd", dataclass=TranslationWDConfig)
class TranslationWDTask(TranslationMDNTask):
    """Translation with a Transformer teacher, to train an MDN student (Lin et al. 2021, "Bag of Tricks for
    Optimizing Transformer Efficiency", Sections 3.3-3.4: weight distillation, then knowledge distillation).

    ``fairseq-train --task translation_wd --teacher-path T.pt`` builds the student, loads the teacher on
    this task (never into the student's checkpoints or optimizer) and, when training starts fresh,
    initialises the student from it (:meth:`initialise_from_teacher`).  ``--criterion kd_cross_entropy``
    takes the teacher's distributions from :meth:`teacher_for`.
    """

    cfg: TranslationWDConfig

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.teacher = None
        self._teacher_placement = None
        self._loading_teacher = False

    # -- the teacher ------------------------------------------------------------------------
    def load_teacher(self, path: str):
        """The teacher model of checkpoint ``path``, ``eval()``, without gradients, on the CPU.  Raises
        :class:`~mdn_fairseq.errors.DistillationError` when ``path`` is missing or unreadable or when its
        dictionaries are not this data's."""
        if not os.path.isfile(path):
            raise DistillationError(f"--teacher-path {path}: no such file")
        try:
            state = checkpoint_utils.load_checkpoint_to_cpu(path)
        except Exception as err:
            raise DistillationError(f"--teacher-path {path}: cannot read the checkpoint ({err})") from err
        self._check_dictionaries(path, state)
        self._loading_teacher = True
        try:
            models, _ = checkpoint_utils.load_model_ensemble([path], task=self, state=state)
        finally:
            self._loading_teacher = False
        teacher = models[0].eval()
        teacher.requires_grad_(False)
        return teacher

    def _check_dictionaries(self, path, state):
        sd = state["model"]
        for side, name, ours in (("source", "encoder", self.src_dict), ("target", "decoder", self.tgt_dict)):
            key = f"{name}.embed_tokens.weight"
            if key in sd and sd[key].shape[0] != len(ours):
                raise DistillationError(
                    f"dictionaries differ: teacher {path} has a {side} dictionary of {sd[key].shape[0]} entries, "
                    f"this data ({self.cfg.data}) {len(ours)}: binarise the student's data with the teacher's "
                    "dictionaries (fairseq-preprocess --srcdict/--tgtdict)"
                )
        cfg = state.get("cfg") or {}
        task_cfg = cfg.get("task") if isinstance(cfg, dict) else getattr(cfg, "task", None)
        data = (task_cfg or {}).get("data") if isinstance(task_cfg, dict) else getattr(task_cfg, "data", None)
        for lang, ours in ((self.cfg.source_lang, self.src_dict), (self.cfg.target_lang, self.tgt_dict)):
            dict_path = os.path.join(str(data).split(os.pathsep)[0], f"dict.{lang}.txt") if data else None
            if dict_path and os.path.isfile(dict_path) and Dictionary.load(dict_path).symbols != ours.symbols:
                raise DistillationError(
                    f"dictionaries differ: {dict_path} (the teacher's) and this data's dict.{lang}.txt hold "
                    "different symbols: binarise the student's data with the teacher's dictionaries"
                )

    def teacher_for(self, model):
        """The teacher, on ``model``'s device and dtype (moved once).  Raises
        :class:`~mdn_fairseq.errors.DistillationError` when the task has no teacher."""
        if self.teacher is None:
            raise DistillationError("no teacher: pass --teacher-path TEACHER.pt")
        p = next(model.parameters())
        if self._teacher_placement != (p.device, p.dtype):
            self.teacher.to(device=p.device, dtype=p.dtype)
            self._teacher_placement = (p.device, p.dtype)
        return self.teacher

    # -- the student ------------------------------------------------------------------------
    def build_model(self, cfg, from_checkpoint=False):
        """The student (``translation_mdn``'s model); with ``--teacher-path``, also load the teacher and,
        unless fairseq-train will restore a checkpoint over it or ``--no-wd-init``, initialise the student
        from it.  The teacher itself is built as a plain model (no generator of its own)."""
        if self._loading_teacher:  # the teacher: no --eval-bleu generator of its own
            return FairseqTask.build_model(self, cfg, from_checkpoint)
        model = super().build_model(cfg, from_checkpoint)
        if from_checkpoint or not self.cfg.teacher_path:
            return model
        self.teacher = self.load_teacher(self.cfg.teacher_path)
        if self.cfg.no_wd_init:
            return model
        restore = checkpoint_to_restore(
            self.cfg.save_dir,
            self.cfg.restore_file,
            self.cfg.checkpoint_suffix,
            self.cfg.finetune_from_model,
            self.cfg.continue_once,
        )
        if restore is not None:
            logger.info("the student's weights will come from %s: not initialising it from the teacher", restore)
        else:
            self.initialise_from_teacher(model)
        return model

    def teacher_heads(self) -> int:
        """The number of heads of the teacher's decoder attention."""
        return self.teacher.decoder.layers[0].self_attn.num_heads

    def initialise_from_teacher(self, model) -> Mapping:
        """Load ``model`` (the student) with weights distilled from the teacher
        (:func:`~mdn_fairseq.distillation.weights.distill_state_dict`), its narrow attentions taking the
        head ``--wd-head`` chooses; returns (and logs) the mapping.  Raises
        :class:`~mdn_fairseq.errors.DistillationError` when the two cannot be mapped."""
        heads = self.teacher_heads()
        choice = choose_head(self.cfg, heads, score=lambda: self.score_heads(len(model.decoder.layers)))
        sd, mapping = distill_state_dict(self.teacher.state_dict(), model.state_dict(), heads, choice.head)
        mapping.head_choice = choice.describe()
        model.load_state_dict(sd, strict=True)
        logger.info("initialised the student from %s:\n  %s", self.cfg.teacher_path, "\n  ".join(mapping.lines()))
        return mapping

    def score_heads(self, n_layers: int) -> List[float]:
        """Per teacher head: the teacher's loss in nats per target token on the first ``--wd-best-sentences``
        sentences of the validation split (loaded if needed) with, in its first ``n_layers`` decoder
        layers, only that head kept (:func:`~mdn_fairseq.distillation.heads.head_losses`)."""
        split = next((s for s in self.datasets if s != "train"), None)
        if split is None:
            self.load_dataset("valid")
            split = "valid"
        ds = self.datasets[split]
        sample = ds.collater([ds[i] for i in range(min(self.cfg.wd_best_sentences, len(ds)))])
        return head_losses(self.teacher, sample["net_input"], sample["target"], self.tgt_dict.pad(), n_layers)
