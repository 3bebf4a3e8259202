"""Which teacher head a narrow student attention takes: ``--wd-head index|random|best``.

:class:`WDHeadConfig` declares the flags once; the ``translation_wd`` task's config inherits them and
``mdn-init`` adds them to its own parser (:func:`add_head_args`) and hands them on (:func:`head_flags`).

* ``--wd-head index`` (default): head ``--wd-head-index`` (default 0);
* ``--wd-head random``: ``random.Random(--wd-head-seed).randrange(heads)`` (seed default 1);
* ``--wd-head best``: the head whose teacher loses least on ``--wd-best-sentences`` validation sentences
  when every decoder attention keeps only that head (:func:`head_losses`).

Before plugin 0.2 the choice was one value, ``index:K``, ``random[:SEED]`` or ``best``: it is now
``--wd-head index --wd-head-index K`` and ``--wd-head random --wd-head-seed SEED``; the task configs saved
in older checkpoints are rewritten so on load (:func:`upgrade_legacy_task_cfg`).
"""

import contextlib
import random
from dataclasses import dataclass, field, fields
from typing import Callable, List, Optional

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.dataclass.utils import gen_parser_from_dataclass
from omegaconf import DictConfig, open_dict
from torch import Tensor

from ..errors import DistillationError
from .weights import mask_heads_except

WD_HEAD_CHOICES = ChoiceEnum(["index", "random", "best"])


@dataclass
class WDHeadConfig(FairseqDataclass):
    """The teacher-head flags of weight distillation (shared by ``translation_wd`` and ``mdn-init``)."""

    wd_head: WD_HEAD_CHOICES = field(
        default="index",
        metadata={
            "help": "teacher head(s) for a narrow student decoder attention: index (--wd-head-index), "
            "random (seeded by --wd-head-seed) or best (lowest teacher loss on --wd-best-sentences "
            "validation sentences with only that head kept). Was index:K / random:SEED before 0.2"
        },
    )
    wd_head_index: int = field(default=0, metadata={"help": "with --wd-head index: the teacher head, 0-based"})
    wd_head_seed: int = field(default=1, metadata={"help": "with --wd-head random: the seed of the draw"})
    wd_best_sentences: int = field(
        default=64, metadata={"help": "with --wd-head best: validation sentences that score the heads"}
    )


def add_head_args(parser) -> None:
    """Add the :class:`WDHeadConfig` flags to an ``argparse`` parser (e.g. ``mdn-init``'s)."""
    gen_parser_from_dataclass(parser, WDHeadConfig())


def head_flags(cfg) -> List[str]:
    """The :class:`WDHeadConfig` values of ``cfg`` (a namespace or config) as fairseq command-line flags."""
    names = [f.name for f in fields(WDHeadConfig) if not f.name.startswith("_")]
    return [x for name in names for x in (f"--{name.replace('_', '-')}", str(getattr(cfg, name)))]


def upgrade_legacy_task_cfg(state: dict) -> None:
    """Rewrite a plugin-0.1 ``wd_head`` value (``index:K``, ``random:SEED``) in the task config of a loaded
    fairseq checkpoint ``state`` (in place) as ``wd_head`` plus ``wd_head_index``/``wd_head_seed``, so that
    fairseq can set the task up from it (the field is a ``ChoiceEnum`` now).  Other states are left alone."""
    cfg = state.get("cfg") if isinstance(state, dict) else None
    task = cfg.get("task") if cfg is not None else None
    value = task.get("wd_head") if task is not None else None
    if not isinstance(value, str) or ":" not in value:
        return
    kind, _, arg = value.partition(":")
    if kind not in ("index", "random") or not arg.isdigit():
        return
    with open_dict(task) if isinstance(task, DictConfig) else contextlib.nullcontext():
        task["wd_head"] = kind
        task["wd_head_index" if kind == "index" else "wd_head_seed"] = int(arg)


@dataclass
class HeadChoice:
    """The teacher head chosen and how (for the mapping's printout)."""

    head: int
    how: str
    losses: Optional[List[float]] = None  # with --wd-head best: per head, nats per target token

    def describe(self) -> str:
        """E.g. ``--wd-head best: teacher head losses (nats/token): 0: 5.1000, 1: 4.9000 -> head 1``."""
        if self.losses is None:
            return f"{self.how} -> head {self.head}"
        scores = ", ".join(f"{h}: {s:.4f}" for h, s in enumerate(self.losses))
        return f"{self.how}: teacher head losses (nats/token): {scores} -> head {self.head}"


def choose_head(cfg, num_heads: int, score: Optional[Callable[[], List[float]]] = None) -> HeadChoice:
    """The head ``cfg`` (a :class:`WDHeadConfig` or anything with its fields) picks among the teacher's
    ``num_heads``; ``score()`` gives the per-head losses for ``--wd-head best`` (lowest wins, the first
    of equals).  Raises :class:`DistillationError` for an index out of range or ``best`` without a scorer."""
    kind = str(cfg.wd_head)
    if kind == "index":
        if not 0 <= cfg.wd_head_index < num_heads:
            raise DistillationError(
                f"--wd-head-index {cfg.wd_head_index}: the teacher's decoder has {num_heads} heads, "
                f"pick one of 0..{num_heads - 1}"
            )
        return HeadChoice(cfg.wd_head_index, f"--wd-head index --wd-head-index {cfg.wd_head_index}")
    if kind == "random":
        head = random.Random(cfg.wd_head_seed).randrange(num_heads)
        return HeadChoice(head, f"--wd-head random --wd-head-seed {cfg.wd_head_seed}")
    if kind == "best":
        if score is None:
            raise DistillationError("--wd-head best needs validation data to score the teacher's heads")
        losses = score()
        return HeadChoice(min(range(num_heads), key=losses.__getitem__), "--wd-head best", losses)
    raise DistillationError(f"--wd-head {kind!r}: expected index, random or best")


def head_losses(teacher, net_input: dict, target: Tensor, pad: int, n_layers: int) -> List[float]:
    """Per teacher head ``h``: the teacher's mean NLL in nats per (non-pad) target token on one batch when
    the self- and cross-attentions of its first ``n_layers`` decoder layers keep only head ``h`` (the
    other heads' output columns zeroed).  ``net_input`` is a fairseq batch's (``src_tokens`` (batch,
    src_len), ``src_lengths``, ``prev_output_tokens`` (batch, tgt_len)), ``target`` (batch, tgt_len).
    The teacher's weights are restored afterwards."""
    attns = [
        m for layer in teacher.decoder.layers[:n_layers] for m in (layer.self_attn, layer.encoder_attn) if m is not None
    ]
    saved = [m.out_proj.weight.detach().clone() for m in attns]
    num_heads, keep, losses = attns[0].num_heads, target.ne(pad), []
    try:
        with torch.no_grad():
            for h in range(num_heads):
                for m, w in zip(attns, saved):
                    m.out_proj.weight.copy_(
                        mask_heads_except({"out_proj.weight": w}, h, m.num_heads)["out_proj.weight"]
                    )
                lprobs = teacher.get_normalized_probs(teacher(**net_input), log_probs=True)
                nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                losses.append((nll * keep).sum().item() / keep.sum().item())
    finally:
        with torch.no_grad():
            for m, w in zip(attns, saved):
                m.out_proj.weight.copy_(w)
    return losses
