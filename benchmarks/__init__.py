"""Benchmarks: pg_scheduler against pgqueuer, procrastinate and chancy (``python -m benchmarks``).

``ours`` is pg_scheduler's adapter (``Scheduler`` and ``AsyncScheduler``), ``peers/`` the peers',
each exposed as a ``library.Library`` whose scenarios run the same machinery in
``peers/_harness.py``; ``measures`` adds statement counts and memory for every library; ``report``
turns the results into the table, the target verdicts and JSON; ``profiles/`` holds the one-off
investigations of pg_scheduler's hot paths (``python -m benchmarks.profiles.<name>``).
"""
