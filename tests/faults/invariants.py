"""The guarantees, as SQL. Every fault test ends by asserting that each of these returns no row.

Each function returns the offending rows (an empty list means the invariant holds), so a failure
message shows exactly which job, tick or lease broke it.
"""

from __future__ import annotations

from typing import Any

from tests.support.cluster import Cluster

# No tick ran twice: a recurring job's tick has at most one completed run.
NO_TICK_TWICE = """
SELECT r.job_key, r.scheduled_at, count(*) AS runs
FROM {runs} r JOIN {jobs} j ON j.key = r.job_key
WHERE j.job_type = 'recurring' AND r.status = 'completed'
GROUP BY 1, 2 HAVING count(*) > 1
"""

# ... and, from the jobs' own records, no tick's code ran to completion twice.
NO_TICK_EFFECT_TWICE = """
SELECT e.job_key, e.scheduled_at, count(*) AS effects
FROM {effects} e JOIN {jobs} j ON j.key = e.job_key
WHERE j.job_type = 'recurring' AND e.finished_at IS NOT NULL
GROUP BY 1, 2 HAVING count(*) > 1
"""

# No two runs of a recurring job overlapped, as the database recorded them (a run that is still
# open counts until now).
NO_OVERLAP = """
SELECT a.job_key, a.id, b.id
FROM {runs} a JOIN {runs} b ON a.job_key = b.job_key AND a.id < b.id
JOIN {jobs} j ON j.key = a.job_key
WHERE j.job_type = 'recurring'
  AND a.started_at < coalesce(b.finished_at, now())
  AND b.started_at < coalesce(a.finished_at, now())
"""

# Nothing is running with an expired lease (older than the timeout plus a rescue pass and slack).
NO_EXPIRED_LEASE = """
SELECT key, node_id, heartbeat_at FROM {jobs}
WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => :horizon)
"""

# Every outcome was written by the lease that held the job: a finished one-time job's final state
# matches its last attempt's run row, and no job has two completed runs of the same attempt.
STALE_OUTCOMES = """
SELECT j.key, j.status, r.status AS last_run
FROM {jobs} j
JOIN LATERAL (
    SELECT status FROM {runs} WHERE job_key = j.key ORDER BY attempt DESC, id DESC LIMIT 1
) r ON true
WHERE j.job_type = 'one_time' AND j.status IN ('completed', 'failed')
  AND r.status <> j.status
  AND NOT (j.status = 'failed' AND r.status = 'lost')  -- given up: max_lost_leases lost runs
"""


def _sql(cluster: Cluster, template: str) -> str:
    n = cluster.names
    return template.format(runs=n.runs_table, jobs=n.jobs_table, effects=cluster.effects)


def check(cluster: Cluster, template: str, **params: Any) -> list[Any]:
    return cluster.query(_sql(cluster, template), **params)


def assert_invariants(cluster: Cluster, *, horizon: float = 5.0, effects_once: bool = True) -> None:
    """All the guarantees at once. ``effects_once=False`` where a re-run is the documented
    at-least-once outcome of the fault (the job's code ran twice; the database still says once)."""
    assert check(cluster, NO_TICK_TWICE) == [], "a tick ran twice"
    if effects_once:
        assert check(cluster, NO_TICK_EFFECT_TWICE) == [], "a tick's code completed twice"
    assert check(cluster, NO_OVERLAP) == [], "two runs of a recurring job overlapped"
    assert check(cluster, NO_EXPIRED_LEASE, horizon=horizon) == [], "running with expired lease"
    assert check(cluster, STALE_OUTCOMES) == [], "a final state not written by the last lease"


def accounted(cluster: Cluster, keys: list[str]) -> dict[str, int]:
    """Every enqueued key still has its row; returns the count of each status."""
    rows = cluster.query(
        f"SELECT status, count(*) FROM {cluster.names.jobs_table} WHERE key = ANY(:keys) GROUP BY 1",
        keys=keys,
    )
    counts = {status: int(n) for status, n in rows}
    assert sum(counts.values()) == len(keys), f"jobs missing: {counts} of {len(keys)}"
    return counts
