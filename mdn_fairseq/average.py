"""``mdn-average``: average the parameters of the last N epoch checkpoints (the paper evaluates so).

    mdn-average --inputs CHECKPOINT_DIR --last 5 --output avg.pt
    mdn-average --inputs a.pt b.pt c.pt --output avg.pt

fairseq's own ``scripts/average_checkpoints.py`` is not part of its pip package, so the recipes use
this one.  Checkpoints are read through :mod:`mdn_fairseq.checkpoint` (weights-only, with the
allow-list of what fairseq checkpoints hold).  Floating-point tensors are averaged in float64 and cast
back; other tensors must be equal in every checkpoint.  The output keeps the newest checkpoint's
config and training state, without its optimizer state (not needed to translate), and is written
atomically.
"""

import argparse
import os
import re
import sys
from collections import OrderedDict
from typing import Dict, List, Sequence

import torch

from .checkpoint import load_checkpoint, save_atomically


class AverageError(Exception):
    """Bad input to the averaging; the message says what and how to fix it."""


def average_state_dicts(state_dicts: Sequence[Dict[str, torch.Tensor]]) -> "OrderedDict[str, torch.Tensor]":
    """The element-wise mean of ``state_dicts`` (same keys and shapes); non-float tensors must agree."""
    if not state_dicts:
        raise AverageError("nothing to average: no state dicts given")
    keys = list(state_dicts[0].keys())
    for i, sd in enumerate(state_dicts[1:], 1):
        if list(sd.keys()) != keys:
            missing = sorted(set(keys) ^ set(sd.keys()))[:5]
            raise AverageError(f"checkpoint {i} has other parameters than checkpoint 0 (e.g. {missing}): "
                               "average checkpoints of one training run only")
    out = OrderedDict()
    for key in keys:
        tensors = [sd[key] for sd in state_dicts]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise AverageError(f"parameter {key} has different shapes {sorted(shapes)}: "
                               "average checkpoints of one training run only")
        if tensors[0].is_floating_point():
            total = torch.zeros_like(tensors[0], dtype=torch.float64)
            for t in tensors:
                total += t.to(torch.float64)
            out[key] = (total / len(tensors)).to(tensors[0].dtype)
        else:
            if any(not torch.equal(tensors[0], t) for t in tensors[1:]):
                raise AverageError(f"non-float tensor {key} differs between checkpoints: cannot average it")
            out[key] = tensors[0].clone()
    return out


def last_epoch_checkpoints(folder: str, n: int) -> List[str]:
    """``checkpointK.pt`` files of ``folder``, the ``n`` with the highest K, newest first."""
    if not os.path.isdir(folder):
        raise AverageError(f"{folder}: no such folder")
    found = []
    for name in os.listdir(folder):
        m = re.fullmatch(r"checkpoint(\d+)\.pt", name)
        if m:
            found.append((int(m.group(1)), os.path.join(folder, name)))
    if not found:
        raise AverageError(f"{folder}: no epoch checkpoints (checkpointN.pt); train without --no-epoch-checkpoints "
                           "and keep them with --keep-last-epochs N")
    found.sort(reverse=True)
    return [path for _, path in found[:n]]


def average_checkpoints(paths: Sequence[str]) -> Dict:
    """A checkpoint whose model is the average of ``paths``' models; config and state of the first."""
    states = []
    for path in paths:
        if not os.path.isfile(path):
            raise AverageError(f"{path}: no such checkpoint")
        states.append(load_checkpoint(path))
    newest = dict(states[0])
    newest["model"] = average_state_dicts([s["model"] for s in states])
    newest.pop("last_optimizer_state", None)
    newest.setdefault("extra_state", {})
    if isinstance(newest["extra_state"], dict):
        newest["extra_state"] = dict(newest["extra_state"], averaged_from=[os.path.basename(p) for p in paths])
    return newest


def main(argv=None):
    p = argparse.ArgumentParser(prog="mdn-average", description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", nargs="+", required=True,
                   help="a checkpoint folder (its last --last epoch checkpoints) or checkpoint files")
    p.add_argument("--last", type=int, default=5, help="with a folder: how many epoch checkpoints (default 5)")
    p.add_argument("--output", required=True, help="the averaged checkpoint to write")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.last < 1:
        p.error("--last must be >= 1")
    try:
        if len(args.inputs) == 1 and os.path.isdir(args.inputs[0]):
            paths = last_epoch_checkpoints(args.inputs[0], args.last)
        else:
            paths = args.inputs
        averaged = average_checkpoints(paths)
    except AverageError as e:
        print(f"mdn-average: {e}", file=sys.stderr)
        sys.exit(2)
    save_atomically(averaged, args.output, prefix=".mdn-average-")
    print(f"mdn-average: {args.output} = mean of {len(paths)} checkpoints: "
          + ", ".join(os.path.basename(p) for p in paths))


if __name__ == "__main__":
    main()
