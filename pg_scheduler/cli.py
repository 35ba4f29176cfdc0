"""The ``pg-scheduler`` command: its entry point, kept free of the ``cli`` extra's imports.

``main()`` checks that click and rich are installed *before* importing them, so a plain
``pip install pg-scheduler`` gets one line naming the extra to install instead of a traceback.
The commands themselves live in ``pg_scheduler.commands``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.util import find_spec

CLI_EXTRA_HINT = "pip install 'pg-scheduler[cli]'"
CLI_REQUIREMENTS = ("click", "rich")

#: Exit codes of every command.
EXIT_OK = 0
EXIT_FAILURE = 1  # the command could not do its job: database unreachable, unknown key, ...
EXIT_USAGE = 2  # the command line itself is wrong: bad flag, bad URL, unknown module, ...
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it


def missing_requirements() -> list[str]:
    """The ``cli`` extra's packages that are not importable."""
    return [name for name in CLI_REQUIREMENTS if find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``pg-scheduler`` with ``argv`` (default: ``sys.argv[1:]``) and exit with its code."""
    missing = missing_requirements()
    if missing:
        print(
            f"pg-scheduler: error: the command-line interface needs {' and '.join(missing)}, "
            f"which are not installed: {CLI_EXTRA_HINT}",
            file=sys.stderr,
        )
        sys.exit(EXIT_FAILURE)
    from .commands import cli

    cli.main(args=list(argv) if argv is not None else None, prog_name="pg-scheduler")


if __name__ == "__main__":  # python -m pg_scheduler.cli (the demo starts its nodes this way)
    main()
