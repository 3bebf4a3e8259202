"""The rows of the paper's Tables 2 and 5 for one task config, and the trainings that make them.

Each structure trick is a config variable holding model flags for ``BASELINE_ARCH`` (:data:`TRICKS`, e.g.
``ABLATION_NO_FFN=--no-decoder-ffn``).  Table 2 switches them on one at a time on the MDN BPE; Table 5 adds
them one after another, then weight distillation (``mdn-init`` from the teacher), then drops decoder dropout
and label smoothing.  Every row's model is resolved up front as ``fairseq-train`` would (fairseq's parser,
the architecture function, the MDN checks), so a flag that does not parse or does not combine fails before
any training, naming the row, the config variables and the flag.  Rows whose resolved model, data and
recipe are the same are one training (the first key wins; ``reproduce.sh``'s ``baseline``, ``bpe10k`` and
``mdn`` come first, so its trained models are reused).
"""

import contextlib
import io
import json
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import MDNError

#: The structure tricks: (config variable, what it is, an example value: mdn_tiny's).
TRICKS = (
    ("ABLATION_SHALLOW_DECODER", "shallow decoder", "--decoder-layers 1"),
    ("ABLATION_ONE_HEAD", "one decoder head", "--decoder-attention-heads 1 --decoder-attention-dim 16"),
    ("ABLATION_NO_FFN", "no decoder FFN", "--no-decoder-ffn"),
    ("ABLATION_LOW_RANK", "low-rank output projection", "--output-rank 16"),
    ("ABLATION_DEEP_ENCODER", "the student's encoder depth", "--encoder-layers 4"),
)
_TABLE2 = (("abl2_shallow", "Shallow decoder", 0), ("abl2_heads", "One head", 1), ("abl2_ffn", "No decoder FFN", 2),
           ("abl2_rank", "Low-rank output", 3))  # fmt: skip
_TABLE5 = (("abl5_shallow", "+ shallow decoder"), ("abl5_heads", "+ pruning heads"), ("abl5_ffn", "+ dropping FFN"),
           ("abl5_rank", "+ output factorisation"), ("abl5_deep", "+ deep configuration"))  # fmt: skip
_REQUIRED = ("BASELINE_ARCH", "STUDENT_ARCH", "STUDENT_DATA", "MAX_EPOCH", "STUDENT_MAX_EPOCH")
#: The paper's tables this module makes.
TABLES = (2, 5)


class AblationError(MDNError):
    """A config the ablation cannot run (a missing variable, flags that do not combine) or a missing
    input of its tables; the message names it and the fix."""


@dataclass(frozen=True)
class Training:
    """One model to train: its folder ``WORK/key`` (also its ``mdn-bench`` row name) and its recipe."""

    key: str
    bpe: str  # the BPE setting it reads and is evaluated on: "baseline" or "mdn"
    data: str  # what it trains on: "baseline" or "mdn" (WORK/data/NAME/bin), "seqkd" (WORK/seqkd/bin)
    arch: str
    flags: Tuple[str, ...] = ()  # model flags
    smoothing: bool = True  # label smoothing 0.1 (the baseline's criterion), else NLL
    wd: bool = False  # initialised from the teacher (mdn-init, then --finetune-from-model)
    epochs: str = "MAX_EPOCH"  # the config variable holding its epochs
    owner: str = "ablation.sh"  # the script that trains it: reproduce.sh or ablation.sh
    variables: Tuple[str, ...] = ()  # the config variables its flags come from

    @classmethod
    def from_dict(cls, d: Dict) -> "Training":
        """The training of a plan's JSON entry (lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_dict(self) -> Dict:
        """The training as a plan's JSON entry (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def model_args(self) -> List[str]:
        """``--arch ARCH FLAGS...``: what ``fairseq-train`` and ``mdn-init`` get."""
        return ["--arch", self.arch, *self.flags]

    def criterion_args(self) -> List[str]:
        """The criterion flags of ``fairseq-train``."""
        if self.smoothing:
            return ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]
        return ["--criterion", "cross_entropy"]

    def recipe(self) -> str:
        """The training in words, e.g. ``WD init, NLL, MDN BPE``."""
        data = {"baseline": "baseline BPE", "mdn": "MDN BPE", "seqkd": "original + distilled pairs"}[self.data]
        return ", ".join(["WD init" if self.wd else "random init", "LS 0.1" if self.smoothing else "NLL", data])


@dataclass(frozen=True)
class Row:
    """One row of Table 2 or 5: its label and the training (key) that makes it."""

    table: int
    label: str
    key: str
    candidate: str  # the key it would have had on its own (equal to ``key`` unless it reuses a training)
    change: str  # what it changes (markdown): Table 2 over its Baseline, Table 5 over the row above


def _flags(config: Dict[str, str], path: str) -> Dict[str, Tuple[str, ...]]:
    """Each trick variable's flags; a missing or empty one raises :class:`AblationError` naming it."""
    for var in _REQUIRED:
        if not config.get(var):
            raise AblationError(f"{path}: {var} is missing (scripts/ablation.sh reads it as reproduce.sh does)")
    out = {}
    for var, what, example in TRICKS:
        if not config.get(var, "").split():
            raise AblationError(
                f"{path}: {var} is missing: scripts/ablation.sh needs the model flags of each trick ({what}), e.g. "
                f'{var}="{example}" (mdn_tiny\'s value; see configs/multi30k_en_de.sh)'
            )
        out[var] = tuple(config[var].split())
    return out


def _code(flags: Sequence[str]) -> str:
    return f"`{' '.join(flags)}`"


def candidates(config: Dict[str, str], path: str) -> Tuple[List[Training], List[Tuple[int, str, str, str]]]:
    """The trainings before folding (``reproduce.sh``'s three, then each row's own) and the rows as
    ``(table, label, candidate key, what the row changes)``."""
    tricks = _flags(config, path)
    base, names = config["BASELINE_ARCH"], [var for var, _, _ in TRICKS]
    seqkd = config["STUDENT_DATA"] == "original+distilled"
    out = [
        Training("baseline", "baseline", "baseline", base, owner="reproduce.sh"),
        Training("bpe10k", "mdn", "mdn", base, owner="reproduce.sh"),
        Training("mdn", "mdn", "seqkd" if seqkd else "mdn", config["STUDENT_ARCH"], ("--decoder-dropout", "0"),
                 smoothing=False, wd=True, epochs="STUDENT_MAX_EPOCH", owner="reproduce.sh"),
    ]  # fmt: skip
    merges = f"MDN_TGT_MERGES={config.get('MDN_TGT_MERGES', '?')}"
    rows = [(2, "Baseline", "bpe10k", f"`{base}` on the MDN BPE ({merges})")]
    for key, label, i in _TABLE2:
        out.append(Training(key, "mdn", "mdn", base, tricks[names[i]], variables=(names[i],)))
        rows.append((2, label, key, _code(tricks[names[i]])))
    rows += [(5, "Baseline", "baseline", f"`{base}` on the baseline BPE"),
             (5, "+ merge operations", "bpe10k", f"the MDN BPE ({merges})")]  # fmt: skip
    flags: Tuple[str, ...] = ()
    for (key, label), var in zip(_TABLE5, names):
        flags += tricks[var]
        out.append(Training(key, "mdn", "mdn", base, flags, variables=tuple(names[: names.index(var) + 1])))
        rows.append((5, label, key, _code(tricks[var])))
    steps = (
        ("abl5_wd", "+ WD", dict(wd=True, epochs="STUDENT_MAX_EPOCH"), "initialised from the teacher (`mdn-init`)"),
        ("abl5_no_dd", "− decoder dropout", dict(flags=flags + ("--decoder-dropout", "0")), "`--decoder-dropout 0`"),
        ("abl5_no_ls", "− label smoothing", dict(smoothing=False), "NLL instead of label smoothing 0.1"),
    )
    for key, label, change, text in steps:
        out.append(replace(out[-1], key=key, **change))
        rows.append((5, label, key, text))
    return out, rows


def resolve_model(arch: str, flags: Sequence[str]) -> Dict:
    """The model arguments ``fairseq-train --arch arch FLAGS`` builds from: fairseq's training parser, the
    architecture function and, for the plugin's MDN models, the MDN defaults and checks.  Returns them as a
    dict.  Raises :class:`AblationError` with fairseq's parser message (an unknown flag or architecture) or
    :class:`~mdn_fairseq.errors.ArchitectureError` (flags that do not combine, naming the flag)."""
    from fairseq import options
    from fairseq.models import ARCH_MODEL_REGISTRY
    from fairseq.models.transformer.transformer_legacy import base_architecture

    from ..models.mdn import MDNModel, check_mdn_args, fill_mdn_defaults

    argv = ["DATA", "--task", "translation_mdn", "--arch", arch, *flags]
    model = ARCH_MODEL_REGISTRY.get(arch)
    mdn = isinstance(model, type) and issubclass(model, MDNModel)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = options.parse_args_and_arch(options.get_training_parser(), argv)
    except SystemExit:
        message = (err.getvalue().strip().splitlines() or ["fairseq's parser refused them"])[-1]
        if model is not None and not mdn and "unrecognized arguments" in message:
            message += f" ({arch} is not an MDN architecture: the tricks' flags need one, e.g. mdn_transformer_base)"
        raise AblationError(message.split("error: ", 1)[-1]) from None
    if mdn:
        fill_mdn_defaults(args)  # what MDNModel.build_model does before building
        base_architecture(args)
        check_mdn_args(args)
    return vars(args)


def _summary(args: Dict) -> Dict:
    """The dims of a resolved model, for the tables' setting line."""
    keys = ("encoder_layers", "decoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
            "decoder_attention_heads", "decoder_attention_dim", "decoder_ffn_embed_dim", "no_decoder_ffn",
            "output_rank", "dropout", "decoder_dropout")  # fmt: skip
    return {k: args.get(k) for k in keys}


def parse_tables(text: str) -> Tuple[int, ...]:
    """``"2"``, ``"5"``, ``"2,5"`` or ``"5,2"`` (``--tables``) as a sorted tuple; anything else raises
    :class:`AblationError` naming the value and the tables there are."""
    parts = text.split(",")
    if not all(p in ("2", "5") for p in parts) or len(set(parts)) != len(parts):
        raise AblationError(f"--tables takes 2, 5 or 2,5 (the paper's Tables 2 and 5), got '{text}'")
    return tuple(sorted(int(p) for p in parts))


def suffix(tables: Sequence[int]) -> str:
    """The file-name suffix of a choice of tables: ``""`` for both, ``"_table2"`` or ``"_table5"`` for one
    (``ablation_table2.md``, ``WORK/ablation/plan_table2.json``, ``WORK/ablation/bench_table2``)."""
    tables = tuple(sorted(tables))
    return "" if tables == TABLES else "_table" + "_".join(map(str, tables))


def build_plan(config: Dict[str, str], path: str = "the config", tables: Sequence[int] = TABLES) -> Dict:
    """The ablation's plan for ``tables`` (a subset of :data:`TABLES`): ``{"tables": [...], "trainings": [...],
    "rows": [...], "models": {key: dims}}`` (JSON-ready; see :class:`Training` and :class:`Row`).  Only the
    trainings that the chosen tables' rows use are in it (Table 2 alone: ``reproduce.sh``'s + BPE 10K and
    the four tricks).  Each model is resolved (:func:`resolve_model`); rows whose model, data, recipe and
    epochs are the same share the first such training.  Raises :class:`AblationError` naming ``path``, the
    row, its config variables and the flag that failed (every row of both tables is checked)."""
    tables = parse_tables(",".join(map(str, tables)))
    trainings, rows = candidates(config, path)
    labels = {key: f"Table {t} '{label}'" for t, label, key, _ in reversed(rows)}
    kept: Dict[Tuple, Training] = {}
    canonical, models = {}, {}
    for t in trainings:
        try:
            args = resolve_model(t.arch, t.flags)
        except MDNError as e:
            where = labels.get(t.key, f"reproduce.sh's {t.key}")
            via = f" (flags of {' + '.join(t.variables)})" if t.variables else ""
            raise AblationError(
                f"{path}: {where}: --arch {t.arch} {' '.join(t.flags)}{via}: {e}".replace("  ", " ")
            ) from None
        model = json.dumps({k: v for k, v in args.items() if k != "arch"}, sort_keys=True, default=str)
        signature = (model, t.data, t.smoothing, t.wd, int(config[t.epochs]))
        canonical[t.key] = kept.setdefault(signature, t).key
        models.setdefault(canonical[t.key], _summary(args))
    rows = [r for r in rows if r[0] in tables]
    used = {canonical[key] for _, _, key, _ in rows}
    return {
        "tables": list(tables),
        "trainings": [t.to_dict() for t in trainings if canonical[t.key] == t.key and t.key in used],
        "rows": [asdict(Row(table, label, canonical[key], key, change)) for table, label, key, change in rows],
        "models": {key: dims for key, dims in models.items() if key in used},
    }


def bash_lines(plan: Dict) -> List[str]:
    """One line per training for ``scripts/ablation.sh``:
    ``owner|key|bpe|data|epochs-variable|wd (0/1)|model args|criterion args|rows``."""
    out = []
    for t in map(Training.from_dict, plan["trainings"]):
        rows = " = ".join(f"Table {r['table']} {r['label']}" for r in plan["rows"] if r["key"] == t.key)
        fields = (t.owner, t.key, t.bpe, t.data, t.epochs, str(int(t.wd)), " ".join(t.model_args()),
                  " ".join(t.criterion_args()), rows or t.key)  # fmt: skip
        out.append("|".join(fields))
    return out


def training(plan: Dict, key: str) -> Optional[Training]:
    """The :class:`Training` ``key`` of ``plan`` (None when there is none)."""
    return next((Training.from_dict(d) for d in plan["trainings"] if d["key"] == key), None)
