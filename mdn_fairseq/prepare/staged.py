"""The outputs of one preparation stage, made visible together when the stage succeeds."""

from contextlib import ExitStack
from pathlib import Path

from ..files import atomic_folder, atomic_write


class StagedFiles:
    """``with StagedFiles() as staged:`` the files opened with :meth:`open` (each an
    :func:`mdn_fairseq.files.atomic_write`) and the folders made with :meth:`directory` replace their
    final paths together when the block ends cleanly; when it raises they are deleted and the final paths
    are left as they were."""

    def __init__(self):
        self._stack = ExitStack()

    def __enter__(self):
        self._stack.__enter__()
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)

    def open(self, path, binary: bool = False):
        """A file object (text: UTF-8, ``\\n`` line ends) whose content becomes ``path`` on success."""
        return self._stack.enter_context(atomic_write(path, "wb" if binary else "w"))

    def directory(self, path) -> Path:
        """A fresh empty-or-absent folder ``path.tmp`` to fill; it becomes ``path`` on success."""
        return Path(self._stack.enter_context(atomic_folder(path)))
