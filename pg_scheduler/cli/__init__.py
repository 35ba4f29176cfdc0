"""The ``pg-scheduler`` command: ``main`` is its entry point (``python -m pg_scheduler.cli``).

Its modules import one way, from the entry point down:

* ``entry``: ``main``, which checks the ``cli`` extra (click, rich) before loading the commands;
* ``commands``: the root group, which assembles the command tree from
  ``migrate`` (``db ...``), ``jobs`` (``jobs ...``, ``runs``, ``nodes``) and ``processes``
  (``worker``, ``demo``);
* ``options`` (the flags and output the commands share), ``serve`` (what ``worker`` runs),
  ``demo`` (the demo cluster, a package of its own) and ``views`` (tables and JSON);
* ``base``: exit codes, one-line errors, words, the database a command works on.
"""

from __future__ import annotations

from .entry import main

__all__ = ["main"]
