"""``--replace-unk``, fixed for the plugin's tasks (``translation_mdn``, ``translation_wd``).

fairseq documents ``--replace-unk [ALIGN_DICT]`` as: each ``<unk>`` of a hypothesis is replaced by the source
token it is aligned to, looked up in ALIGN_DICT (lines ``source target``) when one is given, else copied.
In fairseq 0.12.2 (and fairseq-fixed 0.12.3.1) ``fairseq-generate``/``fairseq-interactive`` crash instead
on the first hypothesis with an ``<unk>``, whichever generator runs:

1. a bare ``--replace-unk`` is read as the file name ``"@@ "`` (``GenerationConfig.replace_unk``'s
   ``argparse_const``, copied from ``--remove-bpe``): ``utils.load_align_dict`` raises FileNotFoundError;
2. generators extract alignments only with ``--print-alignment`` (``FairseqTask.build_generator`` picks
   ``SequenceGeneratorWithAlignment`` on it); otherwise ``hypo["alignment"]`` is an empty tensor and
   ``utils.replace_unk`` raises IndexError (fairseq < 0.9 always extracted them);
3. with ``--print-alignment`` the hard alignment is a list of (source position, target position) pairs,
   but ``utils.replace_unk`` indexes the source tokens with ``alignment[i]`` as if it were the source
   position of target token ``i`` (the old format): TypeError;
4. (latent behind 3) it replaces in the string after ``--remove-bpe``/``--post-process``, where positions
   count words, while the alignment counts the model's tokens.

The fix, installed when a plugin task is built (:func:`install`, idempotent, as
:func:`mdn_fairseq.checkpoint.install`): ``utils.load_align_dict`` reads ``"@@ "`` as "no dictionary"
unless a file has that name (1); the task's ``build_generator`` asks for hard alignments when
``--replace-unk`` is set (:func:`generation_args`; the CLIs print them only with ``--print-alignment``,
from their own config) (2); ``utils.post_process_prediction`` replaces each ``<unk>`` from the pairs, on
the token string, before BPE removal (:func:`replace_unk_tokens`) (3, 4).  Everything else (no
``--replace-unk``, an alignment that is not a list of pairs) goes to fairseq's function unchanged, and a
process that builds no plugin task is left as it was.

The source tokens are ``src_str``'s, as fairseq takes them: ``fairseq-generate`` (which requires
``--dataset-impl raw``) passes the original line of the raw data, ``fairseq-interactive`` the source
tokens as the dictionary spells them.  With ``fairseq-interactive --post-process`` that string has lost its
BPE; a position beyond its end raises :class:`ReplaceUnkError`.
"""

import argparse
import copy
import functools
import os
from typing import Dict, Iterable, Optional, Sequence

from fairseq import tokenizer, utils
from fairseq.data import data_utils
from omegaconf import DictConfig, open_dict

from .errors import MDNError

#: ``GenerationConfig.replace_unk``'s argparse const: what a bare ``--replace-unk`` parses to.
BARE_REPLACE_UNK = "@@ "


class ReplaceUnkError(MDNError, ValueError):
    """``--replace-unk`` settings or input that cannot give a replacement; the message says what to change."""


def generation_args(args):
    """The generation config to build the generator from: ``args`` itself, or, with ``--replace-unk`` and no
    ``--print-alignment``, a copy with ``print_alignment="hard"`` (the caller's ``args`` is not changed,
    so nothing more is printed).  ``args``: ``cfg.generation`` (a DictConfig), a namespace, or None.
    Raises :class:`ReplaceUnkError` for ``--print-alignment soft`` with ``--replace-unk``."""
    if getattr(args, "replace_unk", None) is None:
        return args
    kind = getattr(args, "print_alignment", None)
    if kind == "soft":
        raise ReplaceUnkError(
            "--replace-unk replaces each <unk> by the source token of its hard alignment, but --print-alignment "
            "soft gives soft ones: use --print-alignment hard, or no --print-alignment (the hard alignment is "
            "then extracted without being printed)"
        )
    if kind:
        return args
    if isinstance(args, DictConfig):
        args = copy.deepcopy(args)
        with open_dict(args):
            args.print_alignment = "hard"
        return args
    args = argparse.Namespace(**vars(args)) if isinstance(args, argparse.Namespace) else copy.copy(args)
    args.print_alignment = "hard"
    return args


def is_hard_alignment(alignment) -> bool:
    """Whether ``alignment`` is fairseq's hard alignment: a list of (source, target) int position pairs."""
    return isinstance(alignment, (list, tuple)) and all(
        isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, int) for p in pair)
        for pair in alignment
    )


def replace_unk_tokens(
    hypo_tokens: Sequence[int],
    src_str: str,
    alignment: Iterable[Sequence[int]],
    align_dict: Dict[str, str],
    tgt_dict,
    extra_symbols_to_ignore: Optional[Iterable[int]] = None,
) -> str:
    """The hypothesis as ``tgt_dict.string(hypo_tokens, extra_symbols_to_ignore=...)`` spells it (tokens,
    BPE kept, EOS/BOS and ``extra_symbols_to_ignore`` left out), each ``<unk>`` that has an alignment pair
    replaced by the aligned token of ``src_str`` (whitespace-separated), through ``align_dict`` when it has
    it, else copied.  ``hypo_tokens``: (tgt_len,) token ids; ``alignment``: (source position, target
    position) pairs, 0-based, as ``utils.extract_hard_alignment`` returns them.  An ``<unk>`` without a
    pair stays.  Raises :class:`ReplaceUnkError` when a pair points beyond ``src_str``."""
    src = tokenizer.tokenize_line(src_str)
    source_of = {int(t): int(s) for s, t in alignment}
    ignore = set(extra_symbols_to_ignore or []) | {tgt_dict.eos()}
    if hasattr(tgt_dict, "bos_index"):
        ignore.add(tgt_dict.bos())
    words = []
    for i, token in enumerate(int(t) for t in hypo_tokens):
        if token in ignore:
            continue
        if token == tgt_dict.unk() and i in source_of:
            s = source_of[i]
            if s >= len(src):
                raise ReplaceUnkError(
                    f"--replace-unk: the alignment points at source token {s + 1}, but the source line has "
                    f"{len(src)} ({src_str!r}); the source must be spelt as the model's tokens: with "
                    "fairseq-interactive, leave out --post-process/--remove-bpe (--bpe/--tokenizer still "
                    "detokenise the D- line)"
                )
            words.append(align_dict.get(src[s], src[s]))
        else:
            words.append(tgt_dict[token])
    return " ".join(words)


def _post_process_prediction(original):
    @functools.wraps(original)
    def post_process_prediction(
        hypo_tokens, src_str, alignment, align_dict, tgt_dict, remove_bpe=None, extra_symbols_to_ignore=None
    ):
        if align_dict is None or not is_hard_alignment(alignment):
            return original(hypo_tokens, src_str, alignment, align_dict, tgt_dict, remove_bpe, extra_symbols_to_ignore)
        tokens = replace_unk_tokens(hypo_tokens, src_str, alignment, align_dict, tgt_dict, extra_symbols_to_ignore)
        hypo_str = data_utils.post_process(tokens, remove_bpe)
        # as fairseq: the string re-encoded (scoring), the dictionary may grow
        return tgt_dict.encode_line(hypo_str, add_if_not_exist=True), hypo_str, alignment

    return post_process_prediction


def _load_align_dict(original):
    @functools.wraps(original)
    def load_align_dict(replace_unk):
        if replace_unk == BARE_REPLACE_UNK and not os.path.exists(replace_unk):
            return {}  # a bare --replace-unk: copy the source token
        return original(replace_unk)

    return load_align_dict


def install() -> None:
    """Patch ``fairseq.utils.load_align_dict`` and ``post_process_prediction`` (idempotent; see the module
    docstring).  ``fairseq-generate``/``-interactive`` look both up on ``fairseq.utils`` at each call."""
    for name, fix in (("load_align_dict", _load_align_dict), ("post_process_prediction", _post_process_prediction)):
        original = getattr(utils, name)
        if getattr(original, "_mdn_replace_unk_fix", False):
            continue
        patched = fix(original)
        patched._mdn_replace_unk_fix = True
        setattr(utils, name, patched)
