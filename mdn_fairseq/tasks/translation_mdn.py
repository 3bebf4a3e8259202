"""``translation_mdn``: fairseq's ``translation`` with the lean beam search for generation.

``fairseq-generate``/``fairseq-interactive``/``--eval-bleu`` with ``--task translation_mdn`` decode with
:class:`~mdn_fairseq.fast_generator.FastSequenceGenerator` (same hypotheses and scores as fairseq's
``SequenceGenerator``) whenever it supports the model and the generation options, and with
fairseq's generator otherwise (logged, with the reason).  ``--no-fast-generator`` always uses
fairseq's.  Either way, a generation option that neither generator honours is refused with an error
naming it, and ``--no-repeat-ngram-size`` blocks n-grams (fairseq's CPU blocking is fixed here).
``--replace-unk [ALIGN_DICT]`` works (fairseq's crashes): see :mod:`mdn_fairseq.fairseq_fixes`.
Everything else is ``translation``, so its checkpoints, data and flags carry over.
"""

import logging
from dataclasses import dataclass, field

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from .. import fairseq_fixes
from ..fast_generator import FastSequenceGenerator, install_ngram_blocker, plan
from .batching import KeepEverySentence

logger = logging.getLogger(__name__)


@dataclass
class TranslationMDNConfig(TranslationConfig):
    # fairseq turns a bool field into a store_true flag when it defaults to False (a True default
    # would make --fast-generator switch it off), hence the negative name, as in --no-epoch-checkpoints
    no_fast_generator: bool = field(
        default=False,
        metadata={
            "help": "generate with fairseq's SequenceGenerator even where the lean beam search "
            "(mdn_fairseq.fast_generator, same results) supports the model and options"
        },
    )


@register_task("translation_mdn", dataclass=TranslationMDNConfig)
class TranslationMDNTask(KeepEverySentence, TranslationTask):
    """``translation`` whose generator is the lean beam search where it applies."""

    cfg: TranslationMDNConfig

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        fairseq_fixes.install()  # --replace-unk; before the CLIs load the align dict (fairseq_fixes.py)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, prefix_allowed_tokens_fn=None):
        """fairseq's generator, replaced by the lean beam search where that does everything ``args`` asks
        (:func:`mdn_fairseq.fast_generator.plan`; else the reason is logged).  Options that neither
        generator honours raise :class:`~mdn_fairseq.fast_generator.GenerationOptionError`; fairseq's
        generator gets a working ``--no-repeat-ngram-size`` (:class:`~mdn_fairseq.fast_generator.NGramBlocker`).
        With ``--replace-unk`` either generator extracts hard alignments (:func:`mdn_fairseq.fairseq_fixes.generation_args`)."""
        args = fairseq_fixes.generation_args(args)
        # fairseq builds its generator first, which validates the options with its own errors; it is
        # also the lean search's fallback for batches with prefix tokens or constraints
        stock = super().build_generator(
            models,
            args,
            seq_gen_cls=seq_gen_cls,
            extra_gen_cls_kwargs=dict(extra_gen_cls_kwargs or {}),
            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
        )
        install_ngram_blocker(stock)
        reason = plan(models, args, extra_gen_cls_kwargs, prefix_allowed_tokens_fn)
        if self.cfg.no_fast_generator:
            return stock
        if reason is None and seq_gen_cls is not None:
            reason = f"seq_gen_cls={seq_gen_cls.__name__}"
        if reason is None:
            return FastSequenceGenerator.from_args(
                models, self.target_dictionary, args, fallback=stock, **(extra_gen_cls_kwargs or {})
            )
        logger.info("fast generator not used (%s): generating with fairseq's %s", reason, type(stock).__name__)
        return stock

    def build_tokenizer(self, args):
        """fairseq's tokenizer for ``args`` (``cfg.tokenizer``), or, when the data folder is a model folder of
        ``mdn-export``, the tokenisation of its training text (:mod:`.preprocessing`; contradicting flags raise)."""
        from .preprocessing import build_tokenizer

        return build_tokenizer(self.cfg.data, args)

    def build_bpe(self, args):
        """fairseq's BPE for ``args`` (``cfg.bpe``), or the model folder's subword-nmt codes (:mod:`.preprocessing`)."""
        from .preprocessing import build_bpe

        return build_bpe(self.cfg.data, args)
