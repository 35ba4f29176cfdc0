"""``pg-scheduler``'s entry point: ``main`` checks the ``cli`` extra, then runs the commands.

The extra's packages (click, rich) are checked before anything imports them, so a plain
``pip install sqlalchemy-pg-scheduler`` gets one line naming the extra instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.util import find_spec

from .base import EXIT_FAILURE, report

CLI_EXTRA_HINT = "pip install 'sqlalchemy-pg-scheduler[cli]'"
CLI_REQUIREMENTS = ("click", "rich")


def missing_requirements() -> list[str]:
    """The ``cli`` extra's packages that are not importable."""

    def importable(name: str) -> bool:
        try:
            return find_spec(name) is not None
        except (ImportError, ValueError):  # a broken install, or a module blocked in sys.modules
            return False

    return [name for name in CLI_REQUIREMENTS if not importable(name)]


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``pg-scheduler`` with ``argv`` (default: ``sys.argv[1:]``) and exit with its code."""
    missing = missing_requirements()
    if missing:
        report(
            f"the command-line interface needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: {CLI_EXTRA_HINT}"
        )
        sys.exit(EXIT_FAILURE)
    from .commands import cli  # click and rich are there: load the commands

    cli.main(args=list(argv) if argv is not None else None, prog_name="pg-scheduler")
