"""The one error type of mdn-fairseq's library code: bad input, said so that a user can fix it.

Library functions raise :class:`MDNError` (or a subclass naming its area) with a message that names the
problem and the fix; the CLIs (:mod:`mdn_fairseq.cli.common`) print it as ``prog: message`` and exit 2.
This module imports nothing heavy (no torch, no fairseq).
"""


class MDNError(Exception):
    """Bad input or settings; ``str(err)`` says what is wrong and what to do instead."""
