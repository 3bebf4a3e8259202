"""What the console scripts share: the error type, how it is reported, and argparse basics.

A CLI's ``main(argv=None)`` is ``run(PROG, body, argv)``: ``body`` parses and calls the library; an
:class:`~mdn_fairseq.errors.MDNError` (the library's error type; :class:`CLIError` is the same for
problems found in the CLI itself) is printed as ``PROG: message`` on stderr and the process exits
with code 2, as argparse does for bad flags.
"""

import argparse
import sys
from typing import Callable, List, Optional

from ..errors import MDNError

EXIT_BAD_INPUT = 2


class CLIError(MDNError):
    """Bad flags or input found by a CLI; printed as ``prog: message``, exit code 2."""


def run(prog: str, body: Callable[[List[str]], Optional[int]], argv: Optional[List[str]] = None):
    """Call ``body(argv)`` (``sys.argv[1:]`` by default); report an :class:`MDNError` as
    ``prog: message`` and exit 2.  ``body``'s integer return value, if any, is the exit code."""
    try:
        code = body(sys.argv[1:] if argv is None else list(argv))
    except MDNError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    if code:
        sys.exit(code)


def parser(prog: str, doc: Optional[str]) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose description is the first paragraph of ``doc`` and whose epilog
    keeps the rest verbatim (usage examples)."""
    head, _, rest = (doc or "").strip().partition("\n\n")
    return argparse.ArgumentParser(
        prog=prog, description=head, epilog=rest or None, formatter_class=argparse.RawDescriptionHelpFormatter
    )
