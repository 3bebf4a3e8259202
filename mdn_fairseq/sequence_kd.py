"""``mdn-seqkd``: sequence-level knowledge distillation data (Kim & Rush 2016), as the MDN authors trained.

    mdn-seqkd --teacher T.pt --data DATA-BIN --out DISTILLED [--beam 4] [--batch-size 64] [--with-original]

Translates the training set with the teacher (beam search, batched), writes the distilled corpus as
text (``OUT/text/train.{src,tgt}``, BPE tokens as in the binarised data) and binarises it with the
teacher's dictionaries into ``OUT/bin`` (valid/test copied from DATA-BIN), ready for
``fairseq-train OUT/bin``.  ``--with-original`` trains on original + distilled pairs (the authors'
setting).  Resumable: translations are written in chunks of ``--chunk-batches`` batches, each
atomically, and a re-run skips the chunks (and stages) whose outputs are already there.
"""

import argparse
import glob
import itertools
import json
import os
import shutil
import subprocess
import sys
import time

import torch

import mdn_fairseq  # noqa: F401
from fairseq import checkpoint_utils, utils



def write_text_atomically(path, lines):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def parse(argv):
    p = argparse.ArgumentParser(prog="mdn-seqkd", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--data", required=True, help="binarised data (the teacher's dictionaries)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--subset", default="train")
    p.add_argument("-s", "--source-lang")
    p.add_argument("-t", "--target-lang")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-len-a", type=float, default=1.2)
    p.add_argument("--max-len-b", type=int, default=10)
    p.add_argument("--lenpen", type=float, default=1.0)
    p.add_argument("--chunk-batches", type=int, default=50, help="batches per resumable chunk")
    p.add_argument("--with-original", action="store_true", help="also keep the original pairs")
    p.add_argument("--cpu", action="store_true", help="translate on CPU even when CUDA is there")
    p.add_argument("--fp16", action="store_true")
    args = p.parse_args(argv)
    for path, what in ((args.teacher, "--teacher"), (args.data, "--data")):
        if not os.path.exists(path):
            p.error(f"{what} {path}: no such file or folder")
    return args


def translate(args, chunk_dir):
    """Translate ``args.subset`` in chunks; returns (src_lang, tgt_lang)."""
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [args.teacher],
        arg_overrides={"data": args.data, **({"source_lang": args.source_lang} if args.source_lang else {}),
                       **({"target_lang": args.target_lang} if args.target_lang else {})},
    )
    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    use_cuda = torch.cuda.is_available() and not args.cpu
    for m in models:
        m.eval()
        if args.fp16:
            m.half()
        if use_cuda:
            m.cuda()
    task.load_dataset(args.subset)
    dataset = task.dataset(args.subset)
    gen_args = argparse.Namespace(beam=args.beam, max_len_a=args.max_len_a, max_len_b=args.max_len_b,
                                  lenpen=args.lenpen)
    generator = task.build_generator(models, gen_args)
    itr = task.get_batch_iterator(
        dataset=dataset, max_sentences=args.batch_size, required_batch_size_multiple=1,
        max_positions=utils.resolve_max_positions(task.max_positions(), *[m.max_positions() for m in models]),
        ignore_invalid_inputs=False, num_workers=0,
    ).next_epoch_itr(shuffle=False)
    n_batches = len(itr)
    n_chunks = (n_batches + args.chunk_batches - 1) // args.chunk_batches
    start, done = time.time(), 0
    for c in range(n_chunks):
        path = os.path.join(chunk_dir, f"chunk{c:05d}.jsonl")
        batches = list(itertools.islice(itr, args.chunk_batches))
        if os.path.exists(path):
            continue
        rows = []
        for sample in batches:
            sample = utils.move_to_cuda(sample) if use_cuda else sample
            hypos = task.inference_step(generator, models, sample)
            for i, sid in enumerate(sample["id"].tolist()):
                src_tokens = utils.strip_pad(sample["net_input"]["src_tokens"][i], task.src_dict.pad())
                ref = utils.strip_pad(sample["target"][i], task.tgt_dict.pad())
                rows.append(json.dumps({
                    "id": sid,
                    "src": task.src_dict.string(src_tokens),
                    "ref": task.tgt_dict.string(ref),
                    "hyp": task.tgt_dict.string(hypos[i][0]["tokens"].int().cpu()),
                }, ensure_ascii=False))
        write_text_atomically(path, rows)
        done += len(rows)
        print(f"mdn-seqkd: chunk {c + 1}/{n_chunks} ({done} sentences this run, "
              f"{time.time() - start:.0f}s)", flush=True)
    return src, tgt, len(dataset)


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    chunk_dir, text_dir, bin_dir = (os.path.join(args.out, d) for d in ("chunks", "text", "bin"))
    for d in (chunk_dir, text_dir):
        os.makedirs(d, exist_ok=True)
    src, tgt, n = translate(args, chunk_dir)

    rows = {}
    for path in sorted(glob.glob(os.path.join(chunk_dir, "chunk*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                rows[row["id"]] = row
    if len(rows) != n:
        raise RuntimeError(f"{chunk_dir} holds {len(rows)} translations for {n} sentences: delete it and re-run")
    order = sorted(rows)
    pairs = [(rows[i]["src"], rows[i]["hyp"]) for i in order]
    if args.with_original:
        pairs += [(rows[i]["src"], rows[i]["ref"]) for i in order]
    pairs = [(s, t) for s, t in pairs if s.strip() and t.strip()]
    prefix = os.path.join(text_dir, args.subset)
    write_text_atomically(f"{prefix}.{src}", [s for s, _ in pairs])
    write_text_atomically(f"{prefix}.{tgt}", [t for _, t in pairs])
    print(f"mdn-seqkd: {len(pairs)} pairs in {prefix}.{{{src},{tgt}}}"
          + (" (original + distilled)" if args.with_original else " (distilled)"))

    tmp_bin = bin_dir + ".tmp"
    shutil.rmtree(tmp_bin, ignore_errors=True)
    subprocess.run(
        ["fairseq-preprocess", "--source-lang", src, "--target-lang", tgt, "--trainpref", prefix,
         "--srcdict", os.path.join(args.data, f"dict.{src}.txt"),
         "--tgtdict", os.path.join(args.data, f"dict.{tgt}.txt"), "--destdir", tmp_bin, "--workers", "1"],
        check=True, stdout=subprocess.DEVNULL,
    )
    for f in os.listdir(args.data):
        if not f.startswith(f"{args.subset}.") and f.endswith((".bin", ".idx")):
            shutil.copy(os.path.join(args.data, f), tmp_bin)
    shutil.rmtree(bin_dir, ignore_errors=True)
    os.replace(tmp_bin, bin_dir)
    print(f"mdn-seqkd: binarised into {bin_dir}")


if __name__ == "__main__":
    main()
