"""One-off investigations behind the figures in ``benchmarks/RESULTS.md``.

Each module is a script, run from the repository root as ``python -m benchmarks.profiles.<name>``
(``profile_drain``, ``profile_passes``, ``claim_latency``, ...). Unlike ``python -m benchmarks``,
which compares libraries through their public APIs, these reach into pg_scheduler's internals to
time one stage at a time, so they follow the package's layout and may need updating when it moves.
"""
