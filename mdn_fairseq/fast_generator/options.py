"""Every generation option: implemented by the lean search, handed to fairseq, or refused.

The table :data:`RULES` has one entry per field of fairseq's own ``GenerationConfig``; :func:`plan`
walks *all* of that dataclass's fields, so an option that a newer fairseq adds and this table does not
know is never silently accepted: the search is handed to fairseq's generator, with the reason logged
(and ``tests/test_generation_options.py`` fails until the table says what to do with it).

Kinds of rule:

* ``LEAN``: the lean search implements it (same results as fairseq's ``SequenceGenerator``);
* ``CLI``: fairseq-generate / fairseq-interactive use it outside the generator, the same way whichever
  generator runs (``--nbest``, ``--replace-unk`` ...);
* ``FAIRSEQ``: set, it hands the search to fairseq's generator (sampling, constraints ...);
* ``REFUSE``: set, it is refused with :class:`GenerationOptionError` naming it and what to use
  instead: options that fairseq's translation generator itself ignores or cannot honour.

A rule with ``needs`` is refused when the option it modifies is off (``--lm-weight`` without
``--lm-path``).  Option values are checked by fairseq itself first: the task builds fairseq's
generator (its asserts and ``ValueError``\\ s on incompatible combinations) before deciding.
"""

from dataclasses import MISSING, dataclass, fields
from typing import Any, Dict, Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.dataclass.configs import GenerationConfig

from ..errors import MDNError
from .support import models_unsupported_reason

LEAN, CLI, FAIRSEQ, REFUSE = "lean", "cli", "fairseq", "refuse"


class GenerationOptionError(MDNError, ValueError):
    """A generation option that cannot be honoured: the message names it and what to use instead."""


@dataclass(frozen=True)
class Rule:
    """What happens to one ``GenerationConfig`` field when set: ``kind`` (see the module docstring) and
    ``why`` (LEAN/CLI: what honours it; FAIRSEQ: what fairseq does instead, logged after the flag;
    REFUSE: what to use instead)."""

    kind: str
    why: str
    needs: Optional[str] = None  # the option that must be on for this one to mean anything


def flag(name: str) -> str:
    """The command-line spelling of a config field: ``no_repeat_ngram_size`` -> ``--no-repeat-ngram-size``."""
    return "--" + name.replace("_", "-")


_TWO_PASS = "is for the second decoder of two-pass speech models (--task speech_to_speech); use {} instead"
_ITERATIVE = "is for iterative-refinement generators (--task translation_lev); beam search has none: remove it"

RULES: Dict[str, Rule] = {
    "beam": Rule(LEAN, "beam width"),
    "beam_mt": Rule(REFUSE, _TWO_PASS.format("--beam")),
    "nbest": Rule(CLI, "fairseq-generate/-interactive print the best N of the beam"),
    "max_len_a": Rule(LEAN, "length limit a*src_len + b"),
    "max_len_b": Rule(LEAN, "length limit a*src_len + b"),
    "max_len_a_mt": Rule(REFUSE, _TWO_PASS.format("--max-len-a")),
    "max_len_b_mt": Rule(REFUSE, _TWO_PASS.format("--max-len-b")),
    "min_len": Rule(LEAN, "minimum length"),
    "match_source_len": Rule(FAIRSEQ, "length-constrained search"),
    "unnormalized": Rule(LEAN, "unnormalised scores"),
    "no_early_stop": Rule(REFUSE, "is deprecated and does nothing in fairseq: remove it"),
    "no_beamable_mm": Rule(FAIRSEQ, "the lean search shares keys across the beam, as BeamableMM does"),
    "lenpen": Rule(LEAN, "length penalty"),
    "lenpen_mt": Rule(REFUSE, _TWO_PASS.format("--lenpen")),
    "unkpen": Rule(LEAN, "unknown-word penalty"),
    "replace_unk": Rule(CLI, "fairseq-generate/-interactive replace <unk> from hypo['alignment']"),
    "sacrebleu": Rule(CLI, "fairseq-generate's BLEU warning"),
    "score_reference": Rule(FAIRSEQ, "fairseq's SequenceScorer"),
    "prefix_size": Rule(FAIRSEQ, "prefix tokens"),
    "no_repeat_ngram_size": Rule(LEAN, "n-gram blocking (ngram.py)"),
    "sampling": Rule(FAIRSEQ, "sampling"),
    "sampling_topk": Rule(FAIRSEQ, "sampling", needs="sampling"),
    "sampling_topp": Rule(FAIRSEQ, "sampling", needs="sampling"),
    "constraints": Rule(FAIRSEQ, "lexically constrained search"),
    "temperature": Rule(LEAN, "temperature"),
    "diverse_beam_groups": Rule(FAIRSEQ, "diverse beam search"),
    "diverse_beam_strength": Rule(FAIRSEQ, "diverse beam search", needs="diverse_beam_groups"),
    "diversity_rate": Rule(FAIRSEQ, "diverse siblings search"),
    "print_alignment": Rule(LEAN, "alignments from the returned attention (alignment.py)"),
    "print_step": Rule(REFUSE, _ITERATIVE),
    "lm_path": Rule(FAIRSEQ, "language-model fusion"),
    "lm_weight": Rule(FAIRSEQ, "language-model fusion", needs="lm_path"),
    "iter_decode_eos_penalty": Rule(REFUSE, _ITERATIVE),
    "iter_decode_max_iter": Rule(REFUSE, _ITERATIVE),
    "iter_decode_force_max_iter": Rule(REFUSE, _ITERATIVE),
    "iter_decode_with_beam": Rule(REFUSE, _ITERATIVE),
    "iter_decode_with_external_reranker": Rule(REFUSE, _ITERATIVE),
    "retain_iter_history": Rule(REFUSE, _ITERATIVE),
    "retain_dropout": Rule(FAIRSEQ, "dropout at inference"),
    "retain_dropout_modules": Rule(FAIRSEQ, "dropout at inference", needs="retain_dropout"),
    "decoding_format": Rule(REFUSE, _ITERATIVE),
    "no_seed_provided": Rule(CLI, "fairseq-generate's seeding (set by fairseq when --seed is not given)"),
    "eos_token": Rule(REFUSE, "is speech_to_text's; translation ends hypotheses with the dictionary's </s>: remove it"),
}

NGRAM_SIZE_1 = (
    "--no-repeat-ngram-size 1 would also forbid </s>: fairseq's blocking counts the start symbol (</s>) as "
    "generated, so no hypothesis could end; use 2 or more"
)

# fairseq's own on/off tests where they are not "differs from the default": the option is off at or below
_OFF_AT_OR_BELOW = {
    "diverse_beam_groups": 0,  # FairseqTask.build_generator: diverse_beam_groups > 0
    "diversity_rate": -1,  # ... elif diversity_rate > -1
    "no_repeat_ngram_size": 0,  # SequenceGenerator: no_repeat_ngram_size > 0
    "prefix_size": 0,  # fairseq-generate: prefix_size > 0
}
_OFF_BELOW = {"sampling_topk": 0, "sampling_topp": 0}  # assert sampling_topk < 0 or sampling
_TRUTHY = {"print_alignment", "constraints"}  # getattr(args, "print_alignment", False) and the like

# the options: GenerationConfig's fields, less FairseqDataclass's bookkeeping (``_name``)
DEFAULTS: Dict[str, Any] = {
    f.name: (f.default if f.default is not MISSING else f.default_factory())
    for f in fields(GenerationConfig)
    if f.name not in {g.name for g in fields(FairseqDataclass)}
}


def is_set(name: str, value) -> bool:
    """Whether ``GenerationConfig`` field ``name`` at ``value`` is on, by fairseq's own test for it."""
    default = DEFAULTS.get(name)
    if name in _OFF_AT_OR_BELOW:
        return value is not None and value > _OFF_AT_OR_BELOW[name]
    if name in _OFF_BELOW:
        return value is not None and value >= _OFF_BELOW[name]
    if name in _TRUTHY or default is False:
        return bool(value)
    if default is None:  # fairseq tests these with `is not None` (--replace-unk "" is on: copy the source word)
        return value is not None
    return value != default


def _value(args, name: str):
    return getattr(args, name, DEFAULTS[name]) if args is not None else DEFAULTS[name]


def _refuse(name: str, value, why: str):
    raise GenerationOptionError(f"{flag(name)} {value!r} {why}")


def _field_reason(name: str, value, args, models) -> Optional[str]:
    """The hand-over reason for one set field, or None; raises for a refused one."""
    rule = RULES.get(name)
    if rule is None:
        return f"{flag(name)} (an option of this fairseq that mdn_fairseq.fast_generator does not know)"
    if rule.needs is not None and not is_set(rule.needs, _value(args, rule.needs)):
        _refuse(name, value, f"has no effect without {flag(rule.needs)}: add {flag(rule.needs)} or remove it")
    if rule.kind == REFUSE:
        _refuse(name, value, rule.why)
    if rule.kind == FAIRSEQ:
        return f"{flag(name)} ({rule.why})"
    if name == "print_alignment" and any(getattr(m, "full_context_alignment", False) for m in models):
        return "--print-alignment with a full-context alignment model"
    return None


def check_refused(args) -> None:
    """Raise :class:`GenerationOptionError` for any option of ``args`` (a ``GenerationConfig``, a
    namespace, or None) that neither generator honours, or that needs an option which is off."""
    for name in DEFAULTS:
        value = _value(args, name)
        if is_set(name, value):
            rule = RULES.get(name)
            if rule is not None and (rule.kind == REFUSE or rule.needs is not None):
                _field_reason(name, value, args, [])
    if _value(args, "no_repeat_ngram_size") == 1:
        raise GenerationOptionError(NGRAM_SIZE_1)
    nbest, beam = _value(args, "nbest"), _value(args, "beam")
    if nbest is not None and beam is not None and nbest > beam:
        raise GenerationOptionError(
            f"--nbest {nbest} is more than --beam {beam}: beam search returns {beam} hypotheses per sentence; "
            f"raise --beam to {nbest} or lower --nbest"
        )


_EXTRA_LEAN = {
    "eos",
    "max_len",
    "symbols_to_strip_from_output",
    "tokens_to_suppress",
    "print_alignment",
    "left_pad_target",
    "lm_weight",
}


def plan(models, args=None, extra_gen_cls_kwargs=None, prefix_allowed_tokens_fn=None) -> Optional[str]:
    """Why ``task.build_generator(models, args, extra_gen_cls_kwargs=..., prefix_allowed_tokens_fn=...)``
    must be fairseq's generator (a phrase for the log), or None when the lean search does all of it.

    ``args``: fairseq's generation config (``cfg.generation``, a namespace with some of its fields, or
    None).  Raises :class:`GenerationOptionError` for refused options (:func:`check_refused`).
    Prefix tokens and constraints that arrive with a batch are handed over by the generator itself.
    """
    check_refused(args)
    reason = models_unsupported_reason(models)
    for name in DEFAULTS:
        value = _value(args, name)
        if reason is None and is_set(name, value):
            reason = _field_reason(name, value, args, models)
    if reason is None and (prefix_allowed_tokens_fn or getattr(args, "prefix_allowed_tokens_fn", None)):
        reason = "prefix_allowed_tokens_fn (prefix-constrained search)"
    extra = sorted(k for k, v in (extra_gen_cls_kwargs or {}).items() if v is not None and k not in _EXTRA_LEAN)
    if reason is None and extra:
        reason = f"extra generator options {extra}"
    return reason
