"""fairseq checkpoints on torch >= 2.6, with ``torch.load``'s ``weights_only=True`` kept on.

torch >= 2.6 refuses to unpickle anything but tensors and plain containers unless it is
allow-listed.  fairseq checkpoints also hold an ``argparse.Namespace`` (the legacy ``args`` and
``cfg["model"]`` of argparse models) and, in their ``extra_state``, a few numpy scalars.  We
allow-list exactly those, and only while fairseq loads a checkpoint (``safe_globals`` around
``fairseq.checkpoint_utils.load_checkpoint_to_cpu``): nothing is opened up for other
``torch.load`` calls, and a checkpoint that holds any other pickled object is refused with an
:class:`UnsafeCheckpointError` that names it.
"""

import argparse
import functools
import pickle
import re

import numpy as np
import torch

_multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray


def _with_numpy1_name(obj):
    """``obj`` and, on numpy 2, the ``numpy.core`` name numpy 1 pickled it under."""
    name = f"{obj.__module__}.{obj.__name__}"
    return [obj] + ([(obj, name.replace("numpy._core", "numpy.core"))] if "numpy._core" in name else [])


#: The pickled globals a fairseq checkpoint holds besides tensors and builtin containers:
#: the argparse ``Namespace`` of argparse models, and numpy arrays/scalars that metrics
#: (e.g. ``--eval-bleu``'s n-gram counts) leave in ``extra_state``.
FAIRSEQ_CHECKPOINT_GLOBALS = [
    argparse.Namespace,
    np.ndarray,
    np.dtype,
    *_with_numpy1_name(_multiarray._reconstruct),
    *_with_numpy1_name(_multiarray.scalar),
    *(type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)),
]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds a pickled object outside :data:`FAIRSEQ_CHECKPOINT_GLOBALS`."""


def _refusal(path, err: Exception) -> UnsafeCheckpointError:
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    what = found.group(1) if found else str(err).splitlines()[0]
    return UnsafeCheckpointError(
        f"refused to load checkpoint {path}: it holds a pickled object ({what}) that fairseq "
        "checkpoints do not hold, and torch.load(weights_only=True) only unpickles tensors, plain "
        "containers and mdn_fairseq.checkpoint.FAIRSEQ_CHECKPOINT_GLOBALS. If you made this file "
        "and trust it, re-save it without that object (keep 'model', 'cfg', 'args', "
        "'optimizer_history', 'extra_state', 'last_optimizer_state')."
    )


def safe_globals():
    """Context manager allow-listing :data:`FAIRSEQ_CHECKPOINT_GLOBALS` for ``torch.load``."""
    return torch.serialization.safe_globals(FAIRSEQ_CHECKPOINT_GLOBALS)


def load_checkpoint(path, map_location="cpu"):
    """``torch.load`` a fairseq checkpoint with ``weights_only=True`` and the fairseq allow-list."""
    with safe_globals():
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise _refusal(path, err) from err


def install():
    """Make fairseq's own checkpoint loader use the allow-list (idempotent)."""
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: no weights_only default
        return
    from fairseq import checkpoint_utils

    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "_mdn_allow_list", False):
        return

    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        with safe_globals():
            try:
                return original(path, *args, **kwargs)
            except pickle.UnpicklingError as err:
                if isinstance(err, UnsafeCheckpointError):
                    raise
                raise _refusal(path, err) from err

    load_checkpoint_to_cpu._mdn_allow_list = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu


def save_atomically(obj, path: str, prefix: str = ".mdn-"):
    """``torch.save(obj, path)`` through a temporary file in the same folder: ``path`` is either
    the old file or the complete new one, never half-written."""
    import os
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".pt")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
