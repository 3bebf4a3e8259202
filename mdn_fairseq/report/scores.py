"""The recipe's measurements, read back: training state of a checkpoint, BLEU of a translation, the scores
files the recipe's evaluate stage writes (``WORK/NAME/scores.SUBSET.json``) and the test sets of a work
folder (``WORK/data/prepare.json``).

BLEU: :func:`score` reads ``fairseq-generate`` output (``--remove-bpe``, no ``--tokenizer``): the
case-sensitive tokenised BLEU that fairseq prints (what the paper reports), and sacreBLEU of the
Moses-detokenised hypotheses against the untokenised references, with its signature.
"""

import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from ..checkpoint import load_checkpoint
from ..errors import MDNError


class ReportError(MDNError):
    """A missing or malformed input; the message names it."""


# ------------------------------------------------------------------------------------------------
# training state


def training_state(path: str) -> Tuple[int, int]:
    """(epochs finished, updates) recorded in a fairseq checkpoint."""
    state = load_checkpoint(path)
    extra = state.get("extra_state") or {}
    itr = extra.get("train_iterator") or {}
    # fairseq stores the epoch in progress, or the next one (0 iterations in) once an epoch has ended
    finished = int(itr.get("epoch", 1)) - 1
    history = state.get("optimizer_history") or [{}]
    return finished, int(history[-1].get("num_updates", 0))


def training_done(path: str, max_epoch: int, max_update: int = 0) -> bool:
    """Whether ``fairseq-train --max-epoch max_epoch [--max-update max_update]`` has nothing left to do."""
    if not os.path.isfile(path):
        return False
    epochs, updates = training_state(path)
    return epochs >= max_epoch or (max_update > 0 and updates >= max_update)


def count_params(path: str) -> int:
    """The number of parameters (weights and biases) of a fairseq checkpoint's model."""
    return count_state_params(load_checkpoint(path)["model"])


def count_state_params(model: Dict) -> int:
    """The number of parameters (weights and biases) in a fairseq checkpoint's ``model`` state dict."""
    return sum(v.numel() for k, v in model.items() if k.endswith(("weight", "bias")) and "_float_tensor" not in k)


# ------------------------------------------------------------------------------------------------
# BLEU


_BLEU_LINE = re.compile(r"BLEU4? = ([0-9.]+)")


def parse_generate(path: str) -> Tuple[List[str], Optional[float]]:
    """Hypotheses (``D-`` lines, in sentence order) and the BLEU fairseq-generate printed (or None)."""
    if not os.path.isfile(path):
        raise ReportError(f"{path}: no such fairseq-generate output")
    hyps: Dict[int, str] = {}
    bleu = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("D-"):
                head, _score, text = (line.rstrip("\n").split("\t") + ["", ""])[:3]
                hyps[int(head[2:])] = text
            elif "Generate" in line and "BLEU" in line:
                m = _BLEU_LINE.search(line)
                bleu = float(m.group(1)) if m else None
    if not hyps:
        raise ReportError(f"{path}: no hypotheses (D- lines); did fairseq-generate fail? see its .err file")
    ids = sorted(hyps)
    if ids != list(range(len(ids))):
        missing = sorted(set(range(ids[-1] + 1)) - set(ids))[:5]
        raise ReportError(
            f"{path}: hypotheses missing for sentences {missing}...: fairseq-generate dropped them; generate with "
            "--task translation_mdn (it keeps every sentence) or pass --required-batch-size-multiple 1 "
            "(fairseq's own tasks drop a last partial batch)"
        )
    return [hyps[i] for i in ids], bleu


def read_lines(path: str) -> List[str]:
    """The lines of a reference file (no line ends); a missing file raises :class:`ReportError`."""
    if not os.path.isfile(path):
        raise ReportError(f"{path}: no such reference file")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def sacrebleu_score(hyps_tok: Sequence[str], refs: Sequence[Sequence[str]], lang: str) -> Dict:
    """sacreBLEU of Moses-detokenised ``hyps_tok`` against untokenised ``refs`` (one list per reference)."""
    import sacrebleu
    from sacremoses import MosesDetokenizer

    for i, ref in enumerate(refs):
        if len(ref) != len(hyps_tok):
            raise ReportError(f"reference {i} has {len(ref)} lines for {len(hyps_tok)} hypotheses")
    detok = MosesDetokenizer(lang=lang)
    hyps = [detok.detokenize(h.split()) for h in hyps_tok]
    metric = sacrebleu.metrics.BLEU()
    result = metric.corpus_score(hyps, [list(r) for r in refs])
    return {"score": round(result.score, 2), "signature": str(metric.get_signature()), "detokenised": hyps}


def score(generate_path: str, ref_paths: Sequence[str], lang: str) -> Dict:
    """The scores of one fairseq-generate output: ``sentences``, ``tok_bleu`` (fairseq's, or None),
    ``sacrebleu`` and ``sacrebleu_signature`` against ``ref_paths``, ``references``, ``detokenised``."""
    hyps, bleu = parse_generate(generate_path)
    sacre = sacrebleu_score(hyps, [read_lines(p) for p in ref_paths], lang)
    return {
        "sentences": len(hyps),
        "tok_bleu": bleu,
        "sacrebleu": sacre["score"],
        "sacrebleu_signature": sacre["signature"],
        "references": list(ref_paths),
        "detokenised": sacre["detokenised"],
    }


# ------------------------------------------------------------------------------------------------
# a recipe work folder: its test sets and the scores of its models


def _load_json(path: str) -> Optional[Dict]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_config(path: str) -> Dict[str, str]:
    """The ``KEY=VALUE`` pairs of a task config (:func:`mdn_fairseq.prepare.read_config`)."""
    from ..prepare import read_config as _read

    return _read(path)


def _config_test_set(config: Optional[Dict[str, str]]) -> Optional[str]:
    """The first test set of a config's ``SPLITS`` (``test=A,B``: ``A``), or None."""
    for item in ((config or {}).get("SPLITS") or "").split():
        split, _, stems = item.partition("=")
        if split == "test" and stems:
            return stems.split(",")[0]
    return None


def prepared_test_sets(prepare: Dict, config: Optional[Dict[str, str]] = None) -> List[Dict]:
    """The test sets of an mdn-prepare state (``prepare.json`` as a dict): its ``test_sets``; for one made
    before several test sets existed, the one it prepared, named by its settings (else by ``config``'s
    SPLITS, else ``"test"``).  Each ``{"subset", "name", "missing"}`` (a missing one also ``"reason"``)."""
    recorded = prepare.get("test_sets")
    if recorded:
        return [{"missing": False, **t} for t in recorded]
    name = ((prepare.get("settings") or {}).get("splits") or {}).get("test") or _config_test_set(config) or "test"
    return [{"subset": "test", "name": name, "missing": False}]


def test_sets(work: str, config: Optional[Dict[str, str]] = None) -> List[Dict]:
    """The test sets of a recipe work folder, in the config's order, from ``WORK/data/prepare.json``:
    ``[{"subset": "test", "name": "test_2016_flickr", "missing": False, ...}, {"subset": "test1", "name":
    "test_2017_flickr", "missing": True, "reason": "..."}]``; the first is the main one.  A work folder
    prepared before several test sets existed has one (see :func:`prepared_test_sets`)."""
    return prepared_test_sets(_load_json(os.path.join(work, "data", "prepare.json")) or {}, config)


test_sets.__test__ = False  # not a pytest test when a test module imports it


def read_scores(work: str, key: str, sets: Optional[List[Dict]] = None) -> Dict[str, Dict]:
    """The scores of model ``key`` of a recipe work folder: ``{subset: scores}`` for ``valid`` and every test
    set that is not missing (``test``, ``test1``, ...), each the dict ``mdn-report score`` wrote to
    ``WORK/KEY/scores.SUBSET.json`` (``tok_bleu``, ``sacrebleu``, ``sacrebleu_signature``, ...).  ``sets``:
    the folder's :func:`test_sets` when the caller has them (read from its prepare.json otherwise).

    Raises :class:`ReportError` naming a missing scores file.
    """
    out = {}
    sets = test_sets(work) if sets is None else sets
    for subset in ["valid"] + [t["subset"] for t in sets if not t["missing"]]:
        path = os.path.join(work, key, f"scores.{subset}.json")
        scores = _load_json(path)
        if scores is None:
            raise ReportError(f"{path}: missing; run the evaluation")
        out[subset] = scores
    return out
