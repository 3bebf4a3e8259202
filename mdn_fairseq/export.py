"""A trained checkpoint as a self-contained model folder that reads and writes raw text.

``mdn-prepare`` tokenises with sacremoses Moses without escaping and without aggressive dash splitting (jieba
first for Chinese) and applies subword-nmt BPE with per-side or joint codes (:mod:`mdn_fairseq.prepare`).
fairseq's own ``--tokenizer moses`` escapes ``& ' " | < >`` and splits dashes by default, so a checkpoint plus
fairseq's defaults tokenises raw text otherwise than its training text.  :func:`export_model` writes

    OUT/model.pt            the checkpoint without optimizer state; its cfg carries the preprocessing:
                            cfg.tokenizer (fairseq's moses, or moses_jieba, with --moses-no-escape
                            --moses-no-dash-splits and the languages), cfg.bpe (subword_nmt, OUT/bpecodes),
                            cfg.task (data OUT, source and target language)
    OUT/dict.SRC.txt, OUT/dict.TGT.txt    the dictionaries
    OUT/bpecodes            the source side's BPE codes (the name fairseq's hub looks for)
    OUT/codes.SRC, OUT/codes.TGT (or OUT/codes.joint)    the codes as mdn-prepare named them
    OUT/preprocessing.json  the tokeniser settings per language, the BPE codes per side, the languages, the
                            fairseq settings and which mdn-prepare run and BPE setting they come from

so that ``MDNModel.from_pretrained(OUT)`` (fairseq's hub) and ``fairseq-interactive OUT --user-dir
mdn_fairseq --task translation_mdn --path OUT/model.pt`` (:mod:`mdn_fairseq.tasks.preprocessing`) tokenise
raw text exactly as ``mdn-prepare`` did and detokenise their output.  The folder appears complete or not at
all (:class:`~mdn_fairseq.prepare.staged.StagedFiles`, :mod:`mdn_fairseq.files`).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

from .checkpoint import load_checkpoint
from .errors import MDNError
from .files import atomic_write, save_torch, write_json
from .prepare.staged import StagedFiles
from .prepare.tokenise import BPE_SEPARATOR, tokenizer_description, tokenizer_settings
from .tasks.preprocessing import (
    FAIRSEQ_BPE_CODES,
    FORMAT,
    PREPROCESSING_FILE,
    fairseq_bpe,
    fairseq_tokenizer,
    model_folder,
)

# (checkpoint key, side): the embedding matrices whose rows are the dictionaries' sizes
EMBEDDINGS = (("encoder.embed_tokens.weight", "source"), ("decoder.embed_tokens.weight", "target"))


class ExportError(MDNError):
    """Bad input to :func:`export_model`; the message names the file or flag and the fix."""


@dataclass
class PreparedBPE:
    """One BPE setting folder of ``mdn-prepare`` (``WORK/baseline`` or ``WORK/mdn``), checked."""

    folder: Path
    name: str  # the BPE setting: "baseline" or "mdn"
    src: str
    tgt: str
    joint: bool
    codes: Dict[str, Path]  # lang -> codes file (the same codes.joint twice for a joint setting)
    dicts: Dict[str, Path]  # lang -> bin/dict.LANG.txt
    prepare_state: Dict  # WORK/prepare.json


def read_prepared(folder) -> PreparedBPE:
    """The BPE setting folder ``folder`` of an ``mdn-prepare`` WORK (``bin/`` inside it is accepted too).

    Raises:
        ExportError: no such folder, no ``WORK/prepare.json``, not one of its BPE settings, tokenised with
            settings other than this version's (:func:`~mdn_fairseq.prepare.tokenise.tokenizer_description`),
            missing codes or dictionaries.
    """
    folder = Path(folder).resolve()
    if folder.name == "bin" and (folder.parent.parent / "prepare.json").is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise ExportError(
            f"--prepared {folder}: no such folder (a BPE folder of mdn-prepare: WORK/mdn or WORK/baseline)"
        )
    state_path = folder.parent / "prepare.json"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        settings = state["settings"]
        src, tgt, bpe = settings["src"], settings["tgt"], settings["bpe"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ExportError(
            f"--prepared {folder}: cannot read {state_path} ({err}); --prepared takes a BPE folder of an "
            "mdn-prepare WORK (WORK/mdn or WORK/baseline, next to WORK/prepare.json)"
        ) from err
    if folder.name not in bpe:
        raise ExportError(f"--prepared {folder}: not a BPE setting of {state_path} (its settings: {', '.join(bpe)})")
    for lang in (src, tgt):
        recorded, ours = settings.get("tokenizer", {}).get(lang), tokenizer_description(lang)
        if recorded != ours:
            raise ExportError(
                f"--prepared {folder}: its {lang} text was tokenised as '{recorded}' ({state_path}), this mdn-fairseq "
                f"tokenises as '{ours}': the exported model could not tokenise raw text as its training text was; "
                "prepare the data again (mdn-prepare) and retrain, or export with the mdn-fairseq that prepared it"
            )
    joint = bool(bpe[folder.name].get("joint"))
    codes = {lang: folder / ("codes.joint" if joint else f"codes.{lang}") for lang in (src, tgt)}
    dicts = {lang: folder / "bin" / f"dict.{lang}.txt" for lang in (src, tgt)}
    for what, files in (("BPE codes", codes), ("dictionary", dicts)):
        for path in files.values():
            if not path.is_file() or path.stat().st_size == 0:
                raise ExportError(
                    f"--prepared {folder}: no {what} {path}: mdn-prepare has not finished this BPE setting; "
                    f"run mdn-prepare again with --work {folder.parent}"
                )
    return PreparedBPE(folder, folder.name, src, tgt, joint, codes, dicts, state)


def _checkpoint_state(checkpoint) -> Dict:
    if not os.path.isfile(checkpoint):
        raise ExportError(f"--checkpoint {checkpoint}: no such file")
    try:
        state = load_checkpoint(checkpoint)
    except MDNError:
        raise
    except Exception as err:
        raise ExportError(f"--checkpoint {checkpoint}: cannot read it as a fairseq checkpoint ({err})") from err
    cfg = state.get("cfg") if isinstance(state, dict) else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("task"), dict) or "model" not in state:
        raise ExportError(
            f"--checkpoint {checkpoint}: not a fairseq >= 0.10 checkpoint with 'cfg' and 'model' "
            "(one that fairseq-train wrote, or mdn-average)"
        )
    return state


def check_compatible(state: Dict, prepared: PreparedBPE, checkpoint: str) -> None:
    """Check that checkpoint ``state`` was trained on ``prepared``: its languages (when set), its embedding
    sizes against the dictionaries, and the dictionaries of its training data (when that folder is still
    there, an absolute path) against the prepared ones.

    Raises:
        ExportError: naming the mismatch and the fix.
    """
    from fairseq.data import Dictionary

    task = state["cfg"]["task"]
    for key, ours in (("source_lang", prepared.src), ("target_lang", prepared.tgt)):
        if task.get(key) not in (None, ours):
            raise ExportError(
                f"--checkpoint {checkpoint} translates {task.get('source_lang')}->{task.get('target_lang')}, "
                f"--prepared {prepared.folder} is {prepared.src}->{prepared.tgt}: pass the BPE folder it was trained on"
            )
    for (key, side), lang in zip(EMBEDDINGS, (prepared.src, prepared.tgt)):
        weight = state["model"].get(key)
        size = len(Dictionary.load(str(prepared.dicts[lang])))
        if weight is not None and weight.shape[0] != size:
            raise ExportError(
                f"--checkpoint {checkpoint} has a {side} vocabulary of {weight.shape[0]} ({key}), "
                f"{prepared.dicts[lang]} has {size} entries: pass the BPE folder the model was trained on "
                "(--prepared WORK/mdn or WORK/baseline)"
            )
    trained_on = model_folder(task.get("data"))
    if trained_on and os.path.isabs(trained_on):
        for lang in (prepared.src, prepared.tgt):
            theirs = Path(trained_on) / f"dict.{lang}.txt"
            if theirs.is_file() and _symbols(theirs) != _symbols(prepared.dicts[lang]):
                raise ExportError(
                    f"--checkpoint {checkpoint} was trained on {trained_on}, whose dict.{lang}.txt has other words "
                    f"than {prepared.dicts[lang]}: pass the BPE folder the model was trained on"
                )


def _symbols(path: Path):
    from fairseq.data import Dictionary

    return Dictionary.load(str(path)).symbols


def _check_out(out: Path, prepared: PreparedBPE, checkpoint: str):
    inputs = [prepared.folder, Path(checkpoint).resolve().parent]
    if any(out == p or out in p.parents for p in inputs):
        raise ExportError(f"--out {out} holds the checkpoint or the prepared data: pass another folder")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file: pass a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / PREPROCESSING_FILE).is_file():
        raise ExportError(
            f"--out {out} is a folder with other files (no {PREPROCESSING_FILE}: not a model folder of mdn-export), "
            "which the export would replace: pass a new or empty folder"
        )


def preprocessing_record(prepared: PreparedBPE, checkpoint: str, state: Dict) -> Dict:
    """The content of ``preprocessing.json`` for a model of ``checkpoint`` trained on ``prepared``."""
    src, tgt = prepared.src, prepared.tgt
    settings = prepared.prepare_state["settings"]
    model = state["cfg"].get("model")
    arch = model.get("arch") if isinstance(model, dict) else getattr(model, "arch", None)
    return {
        "format": FORMAT,
        "source_lang": src,
        "target_lang": tgt,
        "tokenizer": {lang: tokenizer_settings(lang) for lang in (src, tgt)},
        "bpe": {
            "tool": "subword-nmt",
            "separator": BPE_SEPARATOR,
            "joint": prepared.joint,
            "codes": {lang: prepared.codes[lang].name for lang in (src, tgt)},
            "source_codes_for_fairseq": FAIRSEQ_BPE_CODES,
        },
        "dictionaries": {lang: prepared.dicts[lang].name for lang in (src, tgt)},
        "fairseq": {"tokenizer": fairseq_tokenizer(src, tgt), "bpe": fairseq_bpe(FAIRSEQ_BPE_CODES)},
        "prepared": {
            "folder": str(prepared.folder),
            "bpe_setting": prepared.name,
            "task": settings.get("task"),
            "quick": settings.get("quick"),
            "fingerprint": prepared.prepare_state.get("fingerprint"),
        },
        "checkpoint": {"source": os.path.abspath(checkpoint), "task": state["cfg"]["task"].get("_name"), "arch": arch},
    }


def export_model(checkpoint, prepared, out) -> Dict:
    """Write the model folder ``out`` (see the module docstring) for ``checkpoint`` (a fairseq checkpoint file)
    trained on ``prepared`` (a BPE folder of ``mdn-prepare``, :func:`read_prepared`).  An existing model folder
    ``out`` is replaced; the new one appears complete or not at all.  Returns the ``preprocessing.json`` record.

    Raises:
        ExportError: a missing or unreadable checkpoint, prepared folder, codes or dictionaries, a checkpoint
            that was not trained on ``prepared`` (:func:`check_compatible`), or an ``out`` that is a file, a
            folder with other content, or holds the inputs.
    """
    checkpoint = str(checkpoint)
    prep = read_prepared(prepared)
    out = Path(out).resolve()
    _check_out(out, prep, checkpoint)
    state = _checkpoint_state(checkpoint)
    check_compatible(state, prep, checkpoint)
    record = preprocessing_record(prep, checkpoint, state)
    state = dict(state)
    state.pop("last_optimizer_state", None)
    cfg = state["cfg"] = dict(state["cfg"])
    cfg["task"] = dict(cfg["task"], data=str(out), source_lang=prep.src, target_lang=prep.tgt)
    cfg["tokenizer"] = record["fairseq"]["tokenizer"]
    cfg["bpe"] = fairseq_bpe(str(out / FAIRSEQ_BPE_CODES))
    with StagedFiles() as staged:
        tmp = staged.directory(out)
        tmp.mkdir(parents=True)
        for lang in (prep.src, prep.tgt):
            _copy(prep.dicts[lang], tmp / prep.dicts[lang].name)
            _copy(prep.codes[lang], tmp / prep.codes[lang].name)
        _copy(prep.codes[prep.src], tmp / FAIRSEQ_BPE_CODES)
        save_torch(state, tmp / "model.pt")
        write_json(tmp / PREPROCESSING_FILE, record)
    return record


def _copy(src: Path, dst: Path):
    with atomic_write(dst, "wb") as f:
        f.write(src.read_bytes())
