"""``mdn-init``: write a student checkpoint initialised from a teacher (weight distillation).

    mdn-init --teacher T.pt --arch mdn [--data DATA-BIN] [--wd-head index:0] --out student.pt [model flags]

The output is a fairseq checkpoint that ``fairseq-train --finetune-from-model student.pt`` and
``fairseq-generate --path student.pt`` accept.  Any fairseq model flag (``--encoder-layers 12``,
``--output-rank 32``, ...) may follow.  The file is written atomically.
"""

import argparse
import os
import sys

from omegaconf import OmegaConf

import mdn_fairseq  # noqa: F401  (registers the plugin)
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from .checkpoint import load_checkpoint, save_atomically


def _teacher_task_cfg(path):
    state = load_checkpoint(path)
    cfg = state.get("cfg") or {}
    task = cfg.get("task") if isinstance(cfg, dict) else None
    if task is None and state.get("args") is not None:
        task = vars(state["args"])
    return task or {}


def parse(argv):
    ours = argparse.ArgumentParser(prog="mdn-init", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    ours.add_argument("--teacher", required=True, help="teacher checkpoint (fairseq)")
    ours.add_argument("--out", required=True, help="student checkpoint to write")
    ours.add_argument("--arch", required=True, help="student architecture, e.g. mdn, mdn_wmt_en_de, mdn_tiny")
    ours.add_argument("--data", help="binarised data with the teacher's dictionaries (default: the teacher's)")
    ours.add_argument("--wd-head", default="index:0", help="index:K, random, random:SEED or best")
    ours.add_argument("-s", "--source-lang")
    ours.add_argument("-t", "--target-lang")
    args, model_flags = ours.parse_known_args(argv)
    if not os.path.isfile(args.teacher):
        ours.error(f"--teacher {args.teacher}: no such file")
    teacher_task = _teacher_task_cfg(args.teacher)
    data = args.data or teacher_task.get("data")
    if not data or not os.path.isdir(str(data).split(os.pathsep)[0]):
        ours.error(f"the teacher's data folder {data!r} is not here: pass --data DATA-BIN (its dictionaries)")
    src = args.source_lang or teacher_task.get("source_lang")
    tgt = args.target_lang or teacher_task.get("target_lang")
    fairseq_argv = [str(data), "--task", "translation_wd", "--teacher-path", args.teacher,
                    "--wd-head", args.wd_head, "--no-wd-init", "--arch", args.arch]
    fairseq_argv += (["--source-lang", src] if src else []) + (["--target-lang", tgt] if tgt else [])
    fairseq_args = options.parse_args_and_arch(options.get_training_parser(), fairseq_argv + model_flags)
    return args, fairseq_args


def student_checkpoint(model, cfg):
    """A fairseq checkpoint holding ``model``'s weights and the config to rebuild it."""
    return {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model.state_dict(),
        "optimizer_history": [
            {"criterion_name": "KDCrossEntropyCriterion", "optimizer_name": "none",
             "lr_scheduler_state": {"best": None}, "num_updates": 0}
        ],
        "extra_state": {"train_iterator": {"epoch": 1}, "val_loss": None},
    }


def main(argv=None):
    args, fairseq_args = parse(sys.argv[1:] if argv is None else argv)
    cfg = convert_namespace_to_omegaconf(fairseq_args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)  # loads the teacher (--no-wd-init: we initialise below)
    mapping = task.initialise_from_teacher(model)
    print(f"mdn-init: {args.teacher} -> {args.out} (--arch {args.arch})")
    for line in mapping.lines():
        print("  " + line)
    save_atomically(student_checkpoint(model, cfg), args.out, prefix=".mdn-init-")
    print(f"mdn-init: wrote {args.out} ({sum(p.numel() for p in model.parameters()):,} parameters)")


if __name__ == "__main__":
    main()
