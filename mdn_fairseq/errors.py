"""The one error type of mdn-fairseq's library code: bad input, said so that a user can fix it.

Library functions raise :class:`MDNError` (or a subclass naming its area) with a message that names the
problem and the fix; the CLIs (:mod:`mdn_fairseq.cli.common`) print it as ``prog: message`` and exit 2.
This module imports nothing heavy (no torch, no fairseq).
"""


class MDNError(Exception):
    """Bad input or settings; ``str(err)`` says what is wrong and what to do instead."""


class ArchitectureError(MDNError, ValueError):
    """An impossible model configuration (``--arch``/model flags); the message names the flag and the
    allowed values.  Also a ``ValueError``, as fairseq's own configuration checks raise."""


class DistillationError(MDNError, ValueError):
    """A teacher and student (or distillation settings) that cannot be combined; the message names
    both values and the fix.  Also a ``ValueError``."""


def install_excepthook() -> None:
    """Print an uncaught :class:`MDNError` as one line ``prog: ErrorType: message`` instead of a traceback
    (fairseq's own CLIs, e.g. ``fairseq-train --arch san_tiny --san-self-attn-blocks 1,1``, build the model
    outside our reach); the exit status stays 1.  ``MDN_TRACEBACK=1`` keeps the traceback.  Other exceptions
    are passed to the hook that was installed before.  Idempotent."""
    import os
    import sys

    previous = sys.excepthook
    if getattr(previous, "_mdn_hook", False):
        return

    def hook(kind, value, tb):
        if issubclass(kind, MDNError) and not os.environ.get("MDN_TRACEBACK"):
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
            print(f"{prog}: {kind.__name__}: {value}", file=sys.stderr)
            return
        previous(kind, value, tb)

    hook._mdn_hook = True
    sys.excepthook = hook
