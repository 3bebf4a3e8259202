"""Raw text in and out of a model folder of ``mdn-export``, tokenised exactly as ``mdn-prepare`` did.

A model folder (``mdn-export``, :mod:`mdn_fairseq.export`) holds ``preprocessing.json``: how its training
text was tokenised (sacremoses Moses without escaping and without aggressive dash splitting, jieba first for
Chinese; :mod:`mdn_fairseq.prepare.tokenise`) and BPE'd (subword-nmt codes per side), and the same as
fairseq ``--tokenizer``/``--bpe`` settings.  The plugin's translation tasks build their tokenizer and BPE
here (:func:`build_tokenizer`, :func:`build_bpe`, called from ``build_tokenizer``/``build_bpe``), so

    fairseq-interactive FOLDER --user-dir mdn_fairseq --task translation_mdn --path FOLDER/model.pt -s en -t de

reads raw text with no ``--tokenizer``/``--bpe`` flags; flags that would tokenise otherwise (``--tokenizer
moses`` without ``--moses-no-escape``, other BPE codes, ...) are refused with a message naming them.  Data
folders without ``preprocessing.json`` keep fairseq's behaviour.  (fairseq's hub, ``from_pretrained(FOLDER)``,
reads the same settings from the exported checkpoint's ``cfg.tokenizer``/``cfg.bpe``.)
"""

import json
import os
from typing import Dict, Optional, Tuple

from fairseq.data import encoders
from omegaconf import DictConfig, OmegaConf

from .. import tokenizers  # noqa: F401  (registers --tokenizer moses_jieba)
from ..errors import MDNError
from ..prepare.tokenise import BPE_SEPARATOR, JIEBA_LANGS, MOSES_OPTIONS

PREPROCESSING_FILE = "preprocessing.json"
FORMAT = "mdn-export/1"
FAIRSEQ_BPE_CODES = "bpecodes"  # the file name fairseq's hub (hub_utils.from_pretrained) looks for


class PreprocessingError(MDNError, ValueError):
    """A model folder's ``preprocessing.json`` that cannot be read, or ``--tokenizer``/``--bpe`` flags that
    contradict it; the message names the flags and what to pass instead."""


def fairseq_tokenizer(src: str, tgt: str) -> Dict:
    """fairseq's ``--tokenizer`` settings (a ``cfg.tokenizer`` node) that tokenise ``src`` text as
    ``mdn-prepare`` does and detokenise ``tgt`` text: ``moses`` (``moses_jieba`` for a Chinese source) with
    ``--moses-no-escape --moses-no-dash-splits`` (from :data:`~mdn_fairseq.prepare.tokenise.MOSES_OPTIONS`)."""
    return {
        "_name": "moses_jieba" if src in JIEBA_LANGS else "moses",
        "source_lang": src,
        "target_lang": tgt,
        "moses_no_dash_splits": not MOSES_OPTIONS["aggressive_dash_splits"],
        "moses_no_escape": not MOSES_OPTIONS["escape"],
    }


def fairseq_bpe(codes: str) -> Dict:
    """fairseq's ``--bpe subword_nmt --bpe-codes CODES`` settings (a ``cfg.bpe`` node), ``mdn-prepare``'s separator."""
    return {"_name": "subword_nmt", "bpe_codes": str(codes), "bpe_separator": BPE_SEPARATOR}


def model_folder(data) -> Optional[str]:
    """The folder of a task's ``data`` setting (its first path), or None when unset."""
    if not data or not isinstance(data, str):
        return None
    return data.split(os.pathsep)[0]


def read_preprocessing(folder) -> Optional[Dict]:
    """``FOLDER/preprocessing.json`` as a dict, or None when ``folder`` has none.

    Raises:
        PreprocessingError: the file is unreadable, not JSON, or of another format.
    """
    if folder is None:
        return None
    path = os.path.join(folder, PREPROCESSING_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            prep = json.load(f)
    except (OSError, ValueError) as err:
        raise PreprocessingError(f"{path} is unreadable ({err}): export the model again with mdn-export") from err
    found = prep.get("format") if isinstance(prep, dict) else None
    if found != FORMAT or "fairseq" not in prep:
        raise PreprocessingError(
            f"{path} is not a preprocessing.json of {FORMAT} (format {found!r}): "
            "export the model again with this version's mdn-export"
        )
    return prep


def _given(cfg, kind: str) -> Tuple[Optional[str], Dict]:
    """The ``--tokenizer``/``--bpe`` choice (``kind``) in ``cfg`` (a DictConfig node, an argparse Namespace or
    None) and its settings; missing (``???``) values are left out."""
    if cfg is None:
        return None, {}
    if isinstance(cfg, DictConfig):
        fields = {k: cfg[k] for k in cfg if not OmegaConf.is_missing(cfg, k)}
        return fields.pop("_name", None), fields
    if isinstance(cfg, str):
        return cfg, {}
    fields = dict(vars(cfg))
    return fields.pop(kind, None), fields


def build_tokenizer(data, cfg):
    """The tokenizer for task data ``data`` and ``--tokenizer`` settings ``cfg`` (``cfg.tokenizer``): the model
    folder's (:func:`read_preprocessing`) when ``data`` is one, else fairseq's ``encoders.build_tokenizer(cfg)``.

    Raises:
        PreprocessingError: ``cfg`` chooses a tokenizer or flags that tokenise otherwise than the folder says.
    """
    folder = model_folder(data)
    prep = read_preprocessing(folder)
    if prep is None:
        return encoders.build_tokenizer(cfg)
    expected = prep["fairseq"]["tokenizer"]
    name, fields = _given(cfg, "tokenizer")
    if name is not None:
        _check_tokenizer(name, fields, expected, prep, folder)
    return encoders.build_tokenizer(OmegaConf.create(expected))


def _check_tokenizer(name: str, fields: Dict, expected: Dict, prep: Dict, folder: str):
    src, tgt = expected["source_lang"], expected["target_lang"]
    how = ", ".join(f"{lang}: {_describe(prep['tokenizer'][lang])}" for lang in (src, tgt))
    flags = f"--tokenizer {expected['_name']} --moses-no-escape --moses-no-dash-splits -s {src} -t {tgt}"
    problems = []
    if name != expected["_name"]:
        problems.append(f"--tokenizer {name} is not {expected['_name']}")
    else:
        if fields.get("moses_no_escape") != expected["moses_no_escape"]:
            problems.append("without --moses-no-escape, & ' \" | < > [ ] are escaped (& -> &amp;)")
        if fields.get("moses_no_dash_splits") != expected["moses_no_dash_splits"]:
            problems.append('without --moses-no-dash-splits, hyphenated words are split ("a-b" -> "a @-@ b")')
        for key, want in (("source_lang", src), ("target_lang", tgt)):
            if fields.get(key) not in (None, want):
                problems.append(f"its {key} is {fields[key]} where the model's is {want}")
    if problems:
        raise PreprocessingError(
            f"{'; '.join(problems)}: this model ({folder}) was trained on text that mdn-prepare tokenised ({how}), "
            f"as its {PREPROCESSING_FILE} says. Leave out --tokenizer (the model folder sets it), or pass {flags}"
        )


def _describe(settings: Dict) -> str:
    options = " ".join(f"{k}={settings[k]}" for k in ("escape", "aggressive_dash_splits"))
    return f"{settings['tokenizer']} {options}" + (
        f" after {settings['segmenter']}" if settings.get("segmenter") else ""
    )


def build_bpe(data, cfg):
    """The BPE for task data ``data`` and ``--bpe`` settings ``cfg`` (``cfg.bpe``): the model folder's
    subword-nmt codes (``FOLDER/bpecodes``, the source side's) when ``data`` is a model folder, else
    fairseq's ``encoders.build_bpe(cfg)``.

    Raises:
        PreprocessingError: ``cfg`` chooses another BPE, other codes or another separator.
    """
    folder = model_folder(data)
    prep = read_preprocessing(folder)
    if prep is None:
        return encoders.build_bpe(cfg)
    expected = dict(prep["fairseq"]["bpe"])
    expected["bpe_codes"] = os.path.join(os.path.abspath(folder), expected["bpe_codes"])
    if not os.path.isfile(expected["bpe_codes"]):
        raise PreprocessingError(f"{expected['bpe_codes']} is missing: export the model again with mdn-export")
    name, fields = _given(cfg, "bpe")
    if name is not None:
        _check_bpe(name, fields, expected, folder)
    return encoders.build_bpe(OmegaConf.create(expected))


def _check_bpe(name: str, fields: Dict, expected: Dict, folder: str):
    problems = []
    if name != expected["_name"]:
        problems.append(f"--bpe {name} is not {expected['_name']}")
    else:
        codes = fields.get("bpe_codes")
        if codes is not None and not _same_file(codes, expected["bpe_codes"]):
            problems.append(f"--bpe-codes {codes} are not the model's source codes ({expected['bpe_codes']})")
        if fields.get("bpe_separator", expected["bpe_separator"]) != expected["bpe_separator"]:
            problems.append(f"--bpe-separator {fields['bpe_separator']} is not {expected['bpe_separator']}")
    if problems:
        raise PreprocessingError(
            f"{'; '.join(problems)}: this model ({folder}) was trained on subword-nmt BPE with those codes, as its "
            f"{PREPROCESSING_FILE} says. Leave out --bpe and --bpe-codes (the model folder sets them), or pass "
            f"--bpe subword_nmt --bpe-codes {expected['bpe_codes']}"
        )


def _same_file(a: str, b: str) -> bool:
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    except OSError:
        return False
