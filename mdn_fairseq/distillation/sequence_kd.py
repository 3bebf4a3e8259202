"""Sequence-level knowledge distillation data (Kim & Rush 2016), as the MDN authors trained their students.

:func:`distil_corpus` translates a binarised subset with the teacher (beam search, batched, in resumable
chunks), writes the distilled corpus as text (``OUT/text/SUBSET.{src,tgt}``, tokens as in the binarised
data) and binarises it with the teacher's dictionaries into ``OUT/bin`` (the other splits copied), ready
for ``fairseq-train OUT/bin``.  Each chunk of translations is written atomically and a re-run skips the
chunks already there.
"""

import argparse
import glob
import itertools
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..errors import DistillationError
from ..files import atomic_folder, write_lines

Log = Callable[[str], None]


@dataclass
class SeqKDOptions:
    """How the teacher translates (fairseq-generate's meaning for the shared names)."""

    subset: str = "train"
    source_lang: Optional[str] = None
    target_lang: Optional[str] = None
    beam: int = 4
    batch_size: int = 64  # sentences per batch
    max_len_a: float = 1.2  # hypotheses are at most max_len_a * source length + max_len_b tokens
    max_len_b: int = 10
    lenpen: float = 1.0
    chunk_batches: int = 50  # batches per resumable chunk
    with_original: bool = False  # also keep the original pairs (the authors' setting)
    cpu: bool = False  # translate on CPU even when CUDA is there
    fp16: bool = False


def translate_chunks(
    teacher: str, data: str, chunk_dir: str, opts: SeqKDOptions, log: Log = print
) -> Tuple[str, str, int]:
    """Translate ``opts.subset`` of ``data`` with the teacher checkpoint, best hypothesis of a beam of
    ``opts.beam``, into ``chunk_dir/chunkNNNNN.jsonl`` (one JSON row per sentence: ``id``, ``src``,
    ``ref``, ``hyp``, as dictionary strings).  Chunks already written are skipped.  Returns
    ``(source_lang, target_lang, number of sentences)``."""
    from fairseq import checkpoint_utils, utils

    langs = {k: v for k, v in (("source_lang", opts.source_lang), ("target_lang", opts.target_lang)) if v}
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([teacher], arg_overrides={"data": data, **langs})
    use_cuda = torch.cuda.is_available() and not opts.cpu
    for m in models:
        m.eval()
        if opts.fp16:
            m.half()
        if use_cuda:
            m.cuda()
    task.load_dataset(opts.subset)
    dataset = task.dataset(opts.subset)
    gen_args = argparse.Namespace(
        beam=opts.beam, max_len_a=opts.max_len_a, max_len_b=opts.max_len_b, lenpen=opts.lenpen
    )
    generator = task.build_generator(models, gen_args)
    itr = task.get_batch_iterator(
        dataset=dataset,
        max_sentences=opts.batch_size,
        required_batch_size_multiple=1,
        max_positions=utils.resolve_max_positions(task.max_positions(), *[m.max_positions() for m in models]),
        ignore_invalid_inputs=False,
        num_workers=0,
    ).next_epoch_itr(shuffle=False)
    n_chunks = (len(itr) + opts.chunk_batches - 1) // opts.chunk_batches
    done, start = 0, time.time()
    for c in range(n_chunks):
        path = os.path.join(chunk_dir, f"chunk{c:05d}.jsonl")
        batches = list(itertools.islice(itr, opts.chunk_batches))
        if os.path.exists(path):
            continue
        rows = []
        for sample in batches:
            sample = utils.move_to_cuda(sample) if use_cuda else sample
            hypos = task.inference_step(generator, models, sample)
            for i, sid in enumerate(sample["id"].tolist()):
                src = utils.strip_pad(sample["net_input"]["src_tokens"][i], task.src_dict.pad())
                ref = utils.strip_pad(sample["target"][i], task.tgt_dict.pad())
                row = {
                    "id": sid,
                    "src": task.src_dict.string(src),
                    "ref": task.tgt_dict.string(ref),
                    "hyp": task.tgt_dict.string(hypos[i][0]["tokens"].int().cpu()),
                }
                rows.append(json.dumps(row, ensure_ascii=False))
        write_lines(path, rows)
        done += len(rows)
        log(f"chunk {c + 1}/{n_chunks} ({done} sentences this run, {time.time() - start:.0f}s)")
    return task.cfg.source_lang, task.cfg.target_lang, len(dataset)


def read_chunks(chunk_dir: str, n: int) -> Dict[int, dict]:
    """The rows of ``chunk_dir``'s chunks by sentence id.  Raises :class:`DistillationError` unless they
    hold exactly ``n`` sentences (chunks of another run)."""
    rows = {}
    for path in sorted(glob.glob(os.path.join(chunk_dir, "chunk*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                rows[row["id"]] = row
    if len(rows) != n:
        raise DistillationError(f"{chunk_dir} holds {len(rows)} translations for {n} sentences: delete it and re-run")
    return rows


def distilled_pairs(rows: Dict[int, dict], with_original: bool) -> List[Tuple[str, str]]:
    """(source, teacher translation) in sentence-id order, then (with ``with_original``) the original
    (source, reference) pairs; pairs with an empty side are left out."""
    order = sorted(rows)
    pairs = [(rows[i]["src"], rows[i]["hyp"]) for i in order]
    if with_original:
        pairs += [(rows[i]["src"], rows[i]["ref"]) for i in order]
    return [(s, t) for s, t in pairs if s.strip() and t.strip()]


def binarise(prefix: str, data: str, subset: str, src: str, tgt: str, bin_dir: str) -> None:
    """``fairseq-preprocess`` ``prefix.{src,tgt}`` as ``subset`` with ``data``'s dictionaries into ``bin_dir``
    (replaced whole, only once complete), with ``data``'s other binarised splits copied.  Raises
    :class:`DistillationError` with fairseq-preprocess's message when it fails."""
    with atomic_folder(bin_dir) as tmp:
        cmd = ["fairseq-preprocess", "--source-lang", src, "--target-lang", tgt, f"--{subset}pref", prefix,
               "--srcdict", os.path.join(data, f"dict.{src}.txt"), "--tgtdict", os.path.join(data, f"dict.{tgt}.txt"),
               "--destdir", tmp, "--workers", "1"]  # fmt: skip
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise DistillationError(f"fairseq-preprocess failed on {prefix}.{{{src},{tgt}}}:\n{proc.stderr[-2000:]}")
        for f in os.listdir(data):
            if not f.startswith(f"{subset}.") and f.endswith((".bin", ".idx")):
                shutil.copy(os.path.join(data, f), tmp)


def distil_corpus(teacher: str, data: str, out: str, opts: SeqKDOptions, log: Log = print) -> Tuple[int, str, str]:
    """Translate, write the text and binarise (see the module docstring).  Returns ``(number of pairs,
    text prefix, bin folder)``."""
    chunk_dir, text_dir, bin_dir = (os.path.join(out, d) for d in ("chunks", "text", "bin"))
    for d in (chunk_dir, text_dir):
        os.makedirs(d, exist_ok=True)
    src, tgt, n = translate_chunks(teacher, data, chunk_dir, opts, log)
    pairs = distilled_pairs(read_chunks(chunk_dir, n), opts.with_original)
    prefix = os.path.join(text_dir, opts.subset)
    write_lines(f"{prefix}.{src}", [s for s, _ in pairs])
    write_lines(f"{prefix}.{tgt}", [t for _, t in pairs])
    log(
        f"{len(pairs)} pairs in {prefix}.{{{src},{tgt}}}"
        + (" (original + distilled)" if opts.with_original else " (distilled)")
    )
    binarise(prefix, data, opts.subset, src, tgt, bin_dir)
    return len(pairs), prefix, bin_dir
