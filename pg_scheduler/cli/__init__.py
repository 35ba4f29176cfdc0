"""The ``pg-scheduler`` command: ``main`` is its entry point (``python -m pg_scheduler.cli``)."""

from __future__ import annotations

from .base import main

__all__ = ["main"]
