"""mdn-fairseq: the Mini-Decoder Network (Lin et al. 2021) as a fairseq ``--user-dir`` plugin.

Importing the package registers the ``mdn`` model and its architectures with fairseq and lets
fairseq load its checkpoints on torch >= 2.6 with ``weights_only=True`` (see :mod:`.checkpoint`).
Where fairseq (or torch) cannot be imported, registration is skipped and the parts that need neither
(:mod:`.prepare`, :mod:`.files`, :mod:`.errors`) still work.
"""

__version__ = "0.2.0"


def _fairseq_importable() -> bool:
    """Whether fairseq imports; only a missing torch or fairseq counts as "no", any other import
    error (a broken install) is raised so that it is not mistaken for a prepare-only environment."""
    try:
        import fairseq  # noqa: F401
    except ModuleNotFoundError as err:
        if err.name in ("torch", "fairseq"):
            return False
        raise
    return True


if _fairseq_importable():
    from . import checkpoint, errors

    errors.install_excepthook()

    checkpoint.install()

    from . import criterions, models, tasks  # noqa: F401
