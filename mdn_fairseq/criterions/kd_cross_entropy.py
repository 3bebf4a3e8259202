"""Word-level knowledge distillation: loss = (1 − α)·NLL + α·KD against a teacher's distribution."""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.logging import metrics
from torch import Tensor

from ..errors import DistillationError


@dataclass
class KDCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    """fairseq's label-smoothed cross-entropy settings (``--label-smoothing``, 0 by default as the paper
    trains its students; ``--report-accuracy``; ``--ignore-prefix-size``) plus the KD term's."""

    kd_alpha: float = field(
        default=0.5, metadata={"help": "weight of the KD term: loss = (1-alpha)*NLL + alpha*KD (0 = plain NLL)"}
    )
    kd_temperature: float = field(
        default=1.0, metadata={"help": "temperature T of both distributions in the KD term (scaled by T^2)"}
    )
    kd_topk: int = field(
        default=0,
        metadata={"help": "keep only the teacher's k most likely tokens (renormalised) in the KD term; 0 = all"},
    )


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float = 1.0, topk: int = 0,
            reduce: bool = True) -> Tensor:  # fmt: skip
    """``T²·KL(p_teacher^T ‖ p_student^T)`` per target position, in nats, zero where ``mask`` is 0.

    ``student_logits``, ``teacher_logits``: (batch, tgt_len, V), unnormalised; ``mask``: (batch, tgt_len),
    1 at real target tokens.  With ``topk`` the teacher's distribution is cut to its k most likely tokens
    and renormalised (the student's log-probabilities are read at those tokens).  Returns the sum over
    positions, a scalar (``reduce``), else the per-position values flattened to (batch·tgt_len, 1) as
    fairseq's label-smoothed loss gives them.
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = teacher_logits.float() / temperature
    if topk > 0:
        t, index = t.topk(min(topk, t.size(-1)), dim=-1)
        s = s.gather(-1, index)
    t = F.log_softmax(t, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1) * mask * temperature**2
    return kl.sum() if reduce else kl.view(-1, 1)


@register_criterion("kd_cross_entropy", dataclass=KDCrossEntropyConfig)
class KDCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    """Word-level knowledge distillation for the MDN student (Lin et al. 2021, "Bag of Tricks for Optimizing
    Transformer Efficiency", Section 3.4; Kim & Rush 2016): fairseq's ``label_smoothed_cross_entropy`` whose
    loss is ``(1 − α)·NLL + α·KD``, KD being :func:`kd_loss` against the teacher of the task.

    Needs a task that holds a teacher (``--task translation_wd --teacher-path T.pt``) when α > 0.  Logs
    fairseq's ``loss``, ``nll_loss``, ``ppl`` (and ``accuracy`` with ``--report-accuracy``) and ``kd_loss``,
    the KD term in bits per target token.  Raises :class:`~mdn_fairseq.errors.DistillationError` for a
    setting out of range or a missing teacher.
    """

    def __init__(self, task, sentence_avg, label_smoothing=0.0, ignore_prefix_size=0, report_accuracy=False,
                 kd_alpha=0.5, kd_temperature=1.0, kd_topk=0):  # fmt: skip
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if not 0.0 <= kd_alpha <= 1.0:
            raise DistillationError(f"--kd-alpha must be in [0, 1]; got {kd_alpha}")
        if kd_temperature <= 0:
            raise DistillationError(f"--kd-temperature must be > 0; got {kd_temperature}")
        if kd_topk < 0:
            raise DistillationError(f"--kd-topk must be >= 0 (0 = the whole vocabulary); got {kd_topk}")
        if not 0.0 <= label_smoothing < 1.0:
            raise DistillationError(f"--label-smoothing must be in [0, 1); got {label_smoothing}")
        if kd_alpha > 0 and getattr(task, "teacher", None) is None:
            raise DistillationError(
                "--criterion kd_cross_entropy with --kd-alpha > 0 needs a teacher: train with "
                "--task translation_wd --teacher-path TEACHER.pt (or set --kd-alpha 0)"
            )
        self.alpha, self.temperature, self.topk = kd_alpha, kd_temperature, kd_topk
        self._kd_term = None  # the KD term of the last compute_loss, for forward's logging output

    def forward(self, model, sample, reduce=True):
        """fairseq's label-smoothed forward (``loss`` summed over target tokens, in nats, ``sample_size``
        tokens or sentences), its logging output with ``kd_loss`` (the KD term, nats, summed) added."""
        loss, sample_size, logging_output = super().forward(model, sample, reduce=reduce)
        logging_output["kd_loss"] = self._kd_term.data
        self._kd_term = None
        return loss, sample_size, logging_output

    def compute_loss(self, model, net_output, sample, reduce=True):
        """``((1 − α)·label-smoothed NLL + α·KD, NLL)`` in nats, summed over the (non-prefix, non-pad) target
        tokens (per token, (batch·tgt_len, 1), without ``reduce``).  ``net_output[0]``: (batch, tgt_len, V)
        student logits; the teacher runs on ``sample["net_input"]`` without gradients."""
        loss, nll_loss = super().compute_loss(model, net_output, sample, reduce=reduce)
        if self.alpha > 0:
            teacher = self.task.teacher_for(model)
            with torch.no_grad():
                teacher_logits = teacher(**sample["net_input"])[0]
            student_logits, target = net_output[0], model.get_targets(sample, net_output)
            if self.ignore_prefix_size > 0:
                p = self.ignore_prefix_size
                student_logits, teacher_logits, target = student_logits[:, p:], teacher_logits[:, p:], target[:, p:]
            mask = target.ne(self.padding_idx)
            kd = kd_loss(student_logits, teacher_logits, mask, self.temperature, self.topk, reduce=reduce)
        else:
            kd = torch.zeros_like(nll_loss)
        self._kd_term = kd.sum() if not reduce else kd
        return (1.0 - self.alpha) * loss + self.alpha * kd, nll_loss

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """fairseq's metrics (``loss``, ``nll_loss``, ``ppl``, ``accuracy``), then ``kd_loss`` in bits per
        target token."""
        super().reduce_metrics(logging_outputs)
        ntokens = sum(log.get("ntokens", 0) for log in logging_outputs)
        kd = sum(log.get("kd_loss", 0) for log in logging_outputs)
        metrics.log_scalar("kd_loss", kd / ntokens / math.log(2), ntokens, round=3)
