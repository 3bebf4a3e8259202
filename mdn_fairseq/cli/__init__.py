"""The console scripts (``mdn-prepare``, ``mdn-init``, ``mdn-seqkd``, ``mdn-average``, ``mdn-report``,
``mdn-bench``): thin ``main`` functions that parse flags, call the library and report.  They share
:mod:`.common` (one error type, ``prog: message`` and exit code 2)."""
