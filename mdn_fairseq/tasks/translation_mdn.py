"""``translation_mdn``: fairseq's ``translation`` with the lean beam search for generation.

``fairseq-generate``/``fairseq-interactive``/``--eval-bleu`` with ``--task translation_mdn`` decode with
:class:`~mdn_fairseq.fast_generator.FastSequenceGenerator` (same hypotheses and scores as fairseq's
``SequenceGenerator``) whenever it supports the model and the generation options, and with
fairseq's generator otherwise (logged once, with the reason).  ``--no-fast-generator`` always uses
fairseq's.  Everything else is ``translation``, so its checkpoints, data and flags carry over.
"""

import logging
from dataclasses import dataclass, field

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from ..fast_generator import FastSequenceGenerator, unsupported_reason

logger = logging.getLogger(__name__)


@dataclass
class TranslationMDNConfig(TranslationConfig):
    # fairseq turns a bool field into a store_true flag when it defaults to False (a True default
    # would make --fast-generator switch it off), hence the negative name, as in --no-epoch-checkpoints
    no_fast_generator: bool = field(
        default=False,
        metadata={"help": "generate with fairseq's SequenceGenerator even where the lean beam search "
                  "(mdn_fairseq.fast_generator, same results) supports the model and options"},
    )


@register_task("translation_mdn", dataclass=TranslationMDNConfig)
class TranslationMDNTask(TranslationTask):
    """``translation`` whose generator is the lean beam search where it applies."""

    cfg: TranslationMDNConfig

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                        prefix_allowed_tokens_fn=None):
        if not self.cfg.no_fast_generator and seq_gen_cls is None:
            reason = unsupported_reason(models, args, extra_gen_cls_kwargs,
                                        prefix_allowed_tokens_fn or getattr(args, "prefix_allowed_tokens_fn", None))
            if reason is None:
                return FastSequenceGenerator.from_args(models, self.target_dictionary, args,
                                                       **(extra_gen_cls_kwargs or {}))
            logger.info("fast generator not used (%s): generating with fairseq's SequenceGenerator", reason)
        return super().build_generator(models, args, seq_gen_cls=seq_gen_cls,
                                       extra_gen_cls_kwargs=extra_gen_cls_kwargs,
                                       prefix_allowed_tokens_fn=prefix_allowed_tokens_fn)
