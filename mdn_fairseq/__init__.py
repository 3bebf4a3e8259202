"""mdn-fairseq: the Mini-Decoder Network (Lin et al. 2021) as a fairseq ``--user-dir`` plugin.

Importing the package registers the ``mdn`` model and its architectures with fairseq and lets
fairseq load its checkpoints on torch >= 2.6 with ``weights_only=True`` (see :mod:`.checkpoint`).
"""

__version__ = "0.1.0"

from . import checkpoint  # noqa: E402

checkpoint.install()

from . import criterions, models, tasks  # noqa: E402,F401
