"""Word-level knowledge distillation: loss = (1 − α)·NLL + α·KD against a teacher's distribution."""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import II

from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from fairseq.dataclass import FairseqDataclass


@dataclass
class KDCrossEntropyConfig(FairseqDataclass):
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
    label_smoothing: float = field(
        default=0.0, metadata={"help": "label smoothing of the NLL term (the paper removes it: 0)"}
    )
    sentence_avg: bool = II("optimization.sentence_avg")


def kd_loss(student_logits, teacher_logits, mask, temperature=1.0, topk=0):
    """Σ over unmasked positions of T²·KL(p_teacher^T ‖ p_student^T); with ``topk`` the teacher's
    distribution is cut to its k most likely tokens and renormalised."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = teacher_logits.float() / temperature
    if topk > 0:
        t, index = t.topk(min(topk, t.size(-1)), dim=-1)
        s = s.gather(-1, index)
    t = F.log_softmax(t, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)
    return (kl * mask).sum() * temperature**2


@register_criterion("kd_cross_entropy", dataclass=KDCrossEntropyConfig)
class KDCrossEntropyCriterion(FairseqCriterion):
    """Needs a task that holds a teacher (``--task translation_wd --teacher-path T.pt``) when α > 0."""

    def __init__(self, task, kd_alpha, kd_temperature, kd_topk, label_smoothing, sentence_avg):
        super().__init__(task)
        if not 0.0 <= kd_alpha <= 1.0:
            raise ValueError(f"--kd-alpha must be in [0, 1]; got {kd_alpha}")
        if kd_temperature <= 0:
            raise ValueError(f"--kd-temperature must be > 0; got {kd_temperature}")
        if kd_topk < 0:
            raise ValueError(f"--kd-topk must be >= 0 (0 = the whole vocabulary); got {kd_topk}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing must be in [0, 1); got {label_smoothing}")
        if kd_alpha > 0 and getattr(task, "teacher", None) is None:
            raise ValueError(
                "--criterion kd_cross_entropy with --kd-alpha > 0 needs a teacher: train with "
                "--task translation_wd --teacher-path TEACHER.pt (or set --kd-alpha 0)"
            )
        self.alpha, self.temperature, self.topk = kd_alpha, kd_temperature, kd_topk
        self.eps = label_smoothing
        self.sentence_avg = sentence_avg

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True).float()
        target = model.get_targets(sample, net_output)
        mask = target.ne(self.padding_idx)
        nll_term, nll_loss = label_smoothed_nll_loss(lprobs, target, self.eps, ignore_index=self.padding_idx)
        if self.alpha > 0:
            teacher = self.task.teacher_for(model)
            with torch.no_grad():
                teacher_logits = teacher(**sample["net_input"])[0]
            kd = kd_loss(net_output[0], teacher_logits, mask, self.temperature, self.topk)
        else:
            kd = nll_loss.new_zeros(())
        loss = (1.0 - self.alpha) * nll_term + self.alpha * kd
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "kd_loss": kd.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        ntokens, sample_size = total("ntokens"), total("sample_size")
        metrics.log_scalar("loss", total("loss") / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar("nll_loss", total("nll_loss") / ntokens / math.log(2), ntokens, round=3)
        metrics.log_scalar("kd_loss", total("kd_loss") / ntokens / math.log(2), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
