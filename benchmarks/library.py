"""One library as ``python -m benchmarks`` drives it: its adapter, its drain settings, and every
scenario written once on top of them.

Each adapter module (``benchmarks.ours``, ``benchmarks.ours_async``, ``benchmarks.peers.*``) holds
only what differs between libraries: its ``PeerAdapter`` (how to install, enqueue, run a worker
and count finished jobs) and, for a peer with settings worth tuning, its ``best`` and
``tuning_candidates``. It exposes ``LIBRARY = Library(ADAPTER, ...)``; the scenarios below call
the measuring code in ``benchmarks.peers._harness`` with that adapter, the same for everyone.

    from benchmarks.peers import PEERS
    rate = PEERS["chancy"].LIBRARY.drain(dsn, n=5000)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.peers import _harness
from benchmarks.peers._harness import PeerAdapter

Settings = dict[str, Any]


def library_defaults(concurrency: int) -> Settings:
    """No settings of its own: the library's defaults."""
    return {}


def nothing_to_sweep(concurrency: int) -> list[Settings]:
    """A library run with its defaults has one candidate: those."""
    return [{}]


class Library:
    """The scenarios of one library (one adapter).

    ``best(concurrency)`` is what a drain runs with unless told otherwise; ``tuning_candidates``
    what ``--sweep`` tries. ``asyncio_library`` is the same library used from an asyncio
    application, which the async scenarios measure: itself for an asyncio-native library
    (``asyncio_native``), the ``Library`` given as ``for_asyncio`` for one with a separate async
    API, else ``None`` (the async scenarios do not apply).
    """

    def __init__(
        self,
        adapter: PeerAdapter,
        *,
        best: Callable[[int], Settings] = library_defaults,
        tuning_candidates: Callable[[int], list[Settings]] = nothing_to_sweep,
        asyncio_native: bool = False,
        for_asyncio: Library | None = None,
    ) -> None:
        self.adapter = adapter
        self.name = adapter.name
        self.best = best
        self.tuning_candidates = tuning_candidates
        self.asyncio_library = self if asyncio_native else for_asyncio

    def enqueue_bulk(self, dsn: str, n: int = 20000) -> float:
        """Jobs/s inserting ``n`` no-op jobs with one call of the library's batch API."""
        return _harness.run_enqueue_bulk(self.adapter, dsn, n)

    def enqueue_one_by_one(self, dsn: str, n: int = 2000) -> float:
        """Jobs/s inserting ``n`` no-op jobs, one API call (transaction) each, in sequence."""
        return _harness.run_enqueue_one_by_one(self.adapter, dsn, n)

    def drain(
        self,
        dsn: str,
        n: int = 20000,
        concurrency: int = 32,
        processes: int = 1,
        *,
        stats: str = "fresh",
        tuning: Settings | None = None,
    ) -> float:
        """Jobs/s for ``processes`` workers (each ``concurrency``) to finish ``n`` queued jobs,
        with ``tuning`` (default: ``best(concurrency)``)."""
        settings = self.best(concurrency) if tuning is None else tuning
        return _harness.run_drain(
            self.adapter, dsn, n, concurrency, processes, stats=stats, tuning=settings
        )

    def wakeup_latency(self, dsn: str, samples: int = 50, delay_s: float = 0.0) -> list[float]:
        """Seconds from commit (or from the scheduled time) to job start, one per sample."""
        return _harness.run_wakeup_latency(self.adapter, dsn, samples, delay_s)

    def cron_lateness(self, dsn: str, seconds: int = 10, nodes: int = 2) -> dict[str, Any]:
        """Lateness/duplicates/missed of a per-second periodic job on ``nodes`` processes."""
        return _harness.run_cron_lateness(self.adapter, dsn, seconds, nodes)

    def idle_statements_per_second(self, dsn: str, seconds: float = 10) -> float:
        """Statements/s sent by one idle worker (see ``_harness.run_idle_statements``)."""
        return _harness.run_idle_statements(self.adapter, dsn, seconds)
