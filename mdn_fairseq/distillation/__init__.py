"""Distillation from a Transformer teacher: the paper's weight distillation and knowledge distillation.

* :mod:`.weights` — the weight-distillation mapping, pure functions over state dicts, one per part of
  the module tree (embeddings, a layer, a narrow attention, a CAN layer, the output factors) and their
  driver; MDN and peer students (AAN, SAN, CAN) alike, what has no counterpart reported fresh;
* :mod:`.heads` — which teacher head a narrow student attention takes (``--wd-head``, declared once);
* :mod:`.student` — a student checkpoint initialised from a teacher (``mdn-init``);
* :mod:`.sequence_kd` — sequence-level KD data: the teacher's translations, binarised (``mdn-seqkd``).

Training with a teacher is the ``translation_wd`` task (:mod:`mdn_fairseq.tasks.translation_wd`), word-level
KD the ``kd_cross_entropy`` criterion (:mod:`mdn_fairseq.criterions.kd_cross_entropy`).
"""

from .heads import WDHeadConfig, choose_head, head_losses
from .weights import Mapping, SVDFactors, distill_state_dict, extract_heads, round_robin, svd_factors

__all__ = [
    "Mapping",
    "SVDFactors",
    "WDHeadConfig",
    "choose_head",
    "distill_state_dict",
    "extract_heads",
    "head_losses",
    "round_robin",
    "svd_factors",
]
