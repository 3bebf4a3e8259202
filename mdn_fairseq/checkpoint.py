"""fairseq checkpoints on torch >= 2.6, with ``torch.load``'s ``weights_only=True`` kept on.

torch >= 2.6 refuses to unpickle anything but tensors and plain containers unless it is
allow-listed.  fairseq checkpoints also hold an ``argparse.Namespace`` (the legacy ``args`` and
``cfg["model"]`` of argparse models) and, in their ``extra_state``, a few numpy scalars; and
``Trainer.load_checkpoint`` broadcasts the loaded state, whose ``cfg`` fairseq has turned into an
omegaconf ``DictConfig``, from rank 0 to the other ranks.  We allow-list exactly those
(:data:`FAIRSEQ_CHECKPOINT_GLOBALS`), and only inside the fairseq functions that unpickle checkpoint
state (:func:`install`): reading a checkpoint file (``checkpoint_utils.load_checkpoint_to_cpu``,
``load_ema_from_checkpoint``) and receiving a broadcast state (``distributed.utils._broadcast_object_slow``,
which ``broadcast_object`` and ``broadcast_tensors`` use).  Nothing is opened up for other
``torch.load`` calls, and state that holds any other pickled object is refused with an
:class:`UnsafeCheckpointError` that names it -- on every rank, with the same message.
"""

import argparse
import collections
import functools
import io
import os
import pickle
import re
import typing
from collections import OrderedDict
from typing import Dict, List, Sequence

import numpy as np
import torch
from fairseq.distributed.utils import _TensorPlaceholder
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode

from .errors import MDNError
from .files import save_torch

_multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray


def _with_numpy1_name(obj):
    """``obj`` and, on numpy 2, the ``numpy.core`` name numpy 1 pickled it under."""
    name = f"{obj.__module__}.{obj.__name__}"
    return [obj] + ([(obj, name.replace("numpy._core", "numpy.core"))] if "numpy._core" in name else [])


#: The pickled globals of fairseq checkpoint state besides tensors and builtin containers: in the
#: file, the argparse ``Namespace`` of argparse models and the numpy arrays/scalars that metrics
#: (e.g. ``--eval-bleu``'s n-gram counts) leave in ``extra_state``; in the state that
#: ``Trainer.load_checkpoint`` broadcasts to the other ranks (``distributed.utils.broadcast_object``),
#: also the placeholders that stand for its tensors (sent separately) and the ``DictConfig`` that
#: ``load_checkpoint_to_cpu`` makes of ``cfg`` (``OmegaConf.create(cfg, flags={"allow_objects": True})``
#: of a plain dict), whose pickle holds exactly the omegaconf entries below.
FAIRSEQ_CHECKPOINT_GLOBALS = [
    argparse.Namespace,
    np.ndarray,
    np.dtype,
    *_with_numpy1_name(_multiarray._reconstruct),
    *_with_numpy1_name(_multiarray.scalar),
    *(type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)),
    # broadcast_object: each tensor of the state is replaced by a frozen dataclass holding its index
    _TensorPlaceholder,
    # the broadcast cfg: its dicts and lists, and every leaf value (an untyped config has no other node)
    DictConfig,
    ListConfig,
    AnyNode,
    # the ``_metadata`` dataclasses of containers and of nodes, and what they hold: ``ref_type``,
    # ``key_type`` and ``element_type`` (typing.Any; a ListConfig's key_type is int), ``object_type``
    # (dict, list) and ``resolver_cache`` (a defaultdict(dict))
    ContainerMetadata,
    Metadata,
    (typing.Any, "typing.Any"),
    dict,
    list,
    int,
    collections.defaultdict,
]

#: What rank 0 broadcasts instead of the state when it refused it: ``{_REFUSED: message}``.
_REFUSED = "mdn_fairseq.checkpoint.refused"


class UnsafeCheckpointError(pickle.UnpicklingError, MDNError):
    """Checkpoint state holds a pickled object outside :data:`FAIRSEQ_CHECKPOINT_GLOBALS`."""


def _refusal(source, what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refused to load checkpoint {source}: it holds a pickled object ({what}) that fairseq "
        "checkpoints do not hold, and torch.load(weights_only=True) only unpickles tensors, plain "
        "containers and mdn_fairseq.checkpoint.FAIRSEQ_CHECKPOINT_GLOBALS. If you made this file "
        "and trust it, re-save it without that object (keep 'model', 'cfg', 'args', "
        "'optimizer_history', 'extra_state', 'last_optimizer_state')."
    )


def _load_error(source, err: Exception) -> UnsafeCheckpointError:
    """The error for ``torch.load(weights_only=True)``'s ``err``: a refused pickled global, or a file that is
    no torch checkpoint at all (e.g. text: ``Unsupported operand 65``)."""
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return _refusal(source, found.group(1))
    reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    return UnsafeCheckpointError(
        f"cannot load checkpoint {source}: it is not a torch checkpoint (torch.load says: "
        f"{reason.group(1).strip() if reason else text.splitlines()[0]}); pass a checkpoint written by "
        "fairseq-train, mdn-init or mdn-average"
    )


def safe_globals():
    """Context manager allow-listing :data:`FAIRSEQ_CHECKPOINT_GLOBALS` for ``torch.load``."""
    return torch.serialization.safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS)


def load_checkpoint(path, map_location="cpu"):
    """``torch.load`` a fairseq checkpoint with ``weights_only=True`` and the fairseq allow-list.

    Raises:
        UnsafeCheckpointError: the file holds a pickled object outside the allow-list.
    """
    with safe_globals():
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise _load_error(path, err) from err


# ----------------------------------------------------------------------------------------------
# fairseq's own loaders, patched by install()


def _guard_file_load(original):
    """A fairseq loader ``original(path, ...)`` of a checkpoint file, run with the allow-list."""

    def load(path, *args, **kwargs):
        with safe_globals():
            try:
                return original(path, *args, **kwargs)
            except UnsafeCheckpointError:
                raise
            except pickle.UnpicklingError as err:
                raise _load_error(path, err) from err

    return load


def _outside_allow_list(obj) -> List[str]:
    """The globals of ``obj``'s pickle that the allow-list would refuse (empty: none)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    with safe_globals():
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(buffer))


def _guard_broadcast(original):
    """``distributed.utils._broadcast_object_slow(obj, src_rank, group, dist_device)``: the receivers
    unpickle with the allow-list; the sender refuses state they would refuse, and the receivers of a
    refusal (``{_REFUSED: message}``, sent here or by :func:`_guard_trainer_load`) raise it too."""

    def broadcast(obj, src_rank, group, dist_device):
        from fairseq.distributed import utils as distributed_utils

        if distributed_utils.get_rank(group) == src_rank:
            unsafe = _outside_allow_list(obj)
            if unsafe:
                err = _refusal(f"state broadcast by rank {src_rank}", ", ".join(unsafe))
                original({_REFUSED: str(err)}, src_rank, group, dist_device)
                raise err
            return original(obj, src_rank, group, dist_device)
        with safe_globals():
            try:
                obj = original(None, src_rank, group, dist_device)
            except pickle.UnpicklingError as err:
                raise _load_error(f"state broadcast by rank {src_rank}", err) from err
        if isinstance(obj, dict) and list(obj) == [_REFUSED]:
            raise UnsafeCheckpointError(obj[_REFUSED])
        return obj

    return broadcast


def _guard_trainer_load(original):
    """``Trainer.load_checkpoint``: when rank 0 refuses the file that it alone reads (fairseq's default,
    ``load_checkpoint_on_all_dp_ranks`` off), the other ranks wait for its broadcast: send them the
    refusal, so that every rank stops with the same message."""

    def load_checkpoint(self, filename, *args, **kwargs):
        try:
            return original(self, filename, *args, **kwargs)
        except UnsafeCheckpointError as err:
            if (
                self.data_parallel_world_size > 1
                and self.data_parallel_rank == 0
                and getattr(err, "read_for_all_ranks", False)
            ):
                from fairseq.distributed import utils as distributed_utils

                distributed_utils._broadcast_object_slow(
                    {_REFUSED: str(err)}, 0, self.data_parallel_process_group, self.device
                )
            raise

    return load_checkpoint


def _guard_checkpoint_to_cpu(original):
    """``checkpoint_utils.load_checkpoint_to_cpu`` with the allow-list; a refusal remembers whether
    this rank read the file for the others (fairseq's ``load_on_all_ranks=False`` in a trainer)."""
    load = _guard_file_load(original)

    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        try:
            state = load(path, arg_overrides=arg_overrides, load_on_all_ranks=load_on_all_ranks)
        except UnsafeCheckpointError as err:
            err.read_for_all_ranks = not load_on_all_ranks
            raise
        from .distillation.heads import upgrade_legacy_task_cfg  # plugin-0.1 --wd-head values in cfg.task

        upgrade_legacy_task_cfg(state)
        return state

    return load_checkpoint_to_cpu


def _patch(owner, name: str, guard) -> None:
    original = getattr(owner, name)
    if getattr(original, "_mdn_allow_list", False):
        return
    patched = functools.wraps(original)(guard(original))
    patched._mdn_allow_list = True
    setattr(owner, name, patched)


def install():
    """Make fairseq unpickle checkpoint state with the allow-list, wherever it does (idempotent):
    ``checkpoint_utils.load_checkpoint_to_cpu`` and ``load_ema_from_checkpoint`` (files),
    ``distributed.utils._broadcast_object_slow`` (the state rank 0 broadcasts: ``broadcast_object``,
    ``broadcast_tensors``) and ``Trainer.load_checkpoint`` (a refusal on rank 0 reaches every rank)."""
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: no weights_only default
        return
    from fairseq import checkpoint_utils, trainer
    from fairseq.distributed import utils as distributed_utils

    _patch(checkpoint_utils, "load_checkpoint_to_cpu", _guard_checkpoint_to_cpu)
    _patch(checkpoint_utils, "load_ema_from_checkpoint", _guard_file_load)
    _patch(distributed_utils, "_broadcast_object_slow", _guard_broadcast)
    _patch(trainer.Trainer, "load_checkpoint", _guard_trainer_load)


def save_atomically(obj, path: str) -> None:
    """``torch.save(obj, path)`` atomically (see :func:`mdn_fairseq.files.save_torch`): ``path`` is
    either the old file or the complete new one, never half-written."""
    save_torch(obj, path)


# ----------------------------------------------------------------------------------------------
# averaging (the paper evaluates the average of the last 5 epoch checkpoints)


class AverageError(MDNError):
    """Bad input to checkpoint averaging; the message says what and how to fix it."""


def average_state_dicts(state_dicts: Sequence[Dict[str, torch.Tensor]]) -> "OrderedDict[str, torch.Tensor]":
    """The element-wise mean of ``state_dicts`` (same keys and shapes).

    Floating-point tensors are summed in float64 and cast back to their dtype; other tensors (step
    counters, version buffers) must be equal in every state dict and are copied.

    Raises:
        AverageError: no state dicts; different keys, shapes, or differing non-float tensors.
    """
    if not state_dicts:
        raise AverageError("nothing to average: no state dicts given")
    keys = list(state_dicts[0].keys())
    for i, sd in enumerate(state_dicts[1:], 1):
        if list(sd.keys()) != keys:
            missing = sorted(set(keys) ^ set(sd.keys()))[:5]
            raise AverageError(
                f"checkpoint {i} has other parameters than checkpoint 0 (e.g. {missing}): "
                "average checkpoints of one training run only"
            )
    out = OrderedDict()
    for key in keys:
        tensors = [sd[key] for sd in state_dicts]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise AverageError(
                f"parameter {key} has different shapes {sorted(shapes)}: average checkpoints of one training run only"
            )
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
    """The ``n`` epoch checkpoints ``checkpointK.pt`` of ``folder`` with the highest K, newest first.

    Raises:
        AverageError: ``folder`` does not exist or holds no epoch checkpoint.
    """
    if not os.path.isdir(folder):
        raise AverageError(f"{folder}: no such folder")
    found = []
    for name in os.listdir(folder):
        m = re.fullmatch(r"checkpoint(\d+)\.pt", name)
        if m:
            found.append((int(m.group(1)), os.path.join(folder, name)))
    if not found:
        raise AverageError(
            f"{folder}: no epoch checkpoints (checkpointN.pt); train without --no-epoch-checkpoints "
            "and keep them with --keep-last-epochs N"
        )
    found.sort(reverse=True)
    return [path for _, path in found[:n]]


def average_checkpoints(paths: Sequence[str]) -> Dict:
    """A checkpoint dict whose ``model`` is the mean of the ``paths``' models (read weights-only with
    the allow-list); config and training state are the first path's, without optimizer state, and
    ``extra_state["averaged_from"]`` lists the file names.

    Raises:
        AverageError: a path is missing, or the models cannot be averaged (see :func:`average_state_dicts`).
    """
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
