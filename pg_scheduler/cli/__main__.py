"""``python -m pg_scheduler.cli``: how the demo starts its nodes."""

from .base import main

main()
