"""``pg-scheduler demo``: a small cluster on your machine that shows what pg_scheduler promises.

The demo starts (or reuses) an embedded PostgreSQL, resets its own tables (prefix ``demo_``),
starts two node processes (``pg-scheduler worker pg_scheduler.cli.demo.app:node``), schedules a
per-second recurring job, enqueues one-time jobs with parameters (one fails twice, then
succeeds), and shows jobs, runs and nodes while they work. At the end, it reads the database and
states how many ticks ran, how many ran twice (zero, however many nodes), and how every one-time
job ended. Its exit code is 0 only if that is all as expected.

Its modules, each importing only modules listed before it: ``app`` (the jobs, the node factory,
the plan), ``reader`` (the queries), ``nodes`` (the node processes), ``screen`` (the live view),
``summary`` (the verdict) and ``run`` (the whole run: ``run.run``, what ``pg-scheduler demo``
calls). This ``__init__`` imports none of them, so a node process loads ``app`` and what ``app``
needs only.
"""
