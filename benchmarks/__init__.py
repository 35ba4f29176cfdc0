"""Benchmarks: pg_scheduler against pgqueuer, procrastinate and chancy (``python -m benchmarks``).

``ours`` is pg_scheduler's harness, ``peers/`` the peers', both driven by the same machinery in
``peers/_harness.py``; ``measures`` adds statement counts and memory for every library; ``report``
turns the results into the table, the target verdicts and JSON; ``profile_*`` are entry points for
profiling pg_scheduler's hot paths on their own.
"""
