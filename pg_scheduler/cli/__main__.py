"""``python -m pg_scheduler.cli``: how the demo starts its nodes."""

from .entry import main

main()
