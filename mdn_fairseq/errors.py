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
