"""The poller: claims due jobs while slots are free, then sleeps until the next known due time.

It wakes early on a NOTIFY (an enqueue, a retry, a rescue) and when one of its own jobs finishes
(a slot came free). ``job_check_interval`` only bounds the sleep, so a per-second schedule fires on
time without fast polling, and an idle node sends almost nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pg_scheduler.db.outages import DatabaseErrors
from pg_scheduler.db.records import ClaimedJob
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.node.inflight import Inflight
from pg_scheduler.node.registry import JobRegistry
from pg_scheduler.node.runtime import Runtime, Stream
from pg_scheduler.node.service import Service

# Wake this long after the next due time so that, by the database clock, the job is due.
_DUE_MARGIN_SECONDS = 0.001

#: How long a full node, woken by a freed slot, waits for more slots to free before claiming.
GATHER_SECONDS = 0.002


@dataclass(frozen=True)
class PollResult:
    """One pass: how many jobs were claimed, how many slots were free, and how long until the
    next known due time (``None``: nothing known; sleep the full check interval)."""

    claimed: int
    free_slots: int
    wait_seconds: float | None


class Poller(Service):
    name = "poller"

    def __init__(
        self,
        runtime: Runtime,
        *,
        node_id: str,
        registry: JobRegistry,
        inflight: Inflight,
        cap: int,
        interval: float,
        dispatch: Callable[[ClaimedJob], None],
        errors: DatabaseErrors,
    ) -> None:
        super().__init__(runtime)
        self.node_id = node_id
        self.registry = registry
        self.inflight = inflight
        self.cap = cap
        self.interval = interval
        self.dispatch = dispatch
        self.errors = errors
        # How many free slots are worth waking the poller for (see ``slot_freed``).
        self._wake_at_free = 1

    def slot_freed(self) -> None:
        """A job's code ended, or its lease left the node: wake the poller if that made enough
        slots free. While it gathers slots that is half of them, so a pass of 32 jobs costs the
        poller one wake-up instead of one per ending job (each a thread switch)."""
        if self.inflight.free_slots(self.cap) >= self._wake_at_free:
            self.wakeup.set()

    async def run_once(self) -> PollResult:
        """Claim as many due jobs as there are free slots and start them."""
        # A job whose code has ended no longer takes a slot while its outcome is being written:
        # the next claim overlaps that write instead of waiting for it.
        free = self.inflight.free_slots(self.cap)
        names, retries = self.registry.claimable()
        if free <= 0 or not names:
            return PollResult(0, max(free, 0), None)

        def claim(repo: JobRepository) -> tuple[list[ClaimedJob], float | None]:
            return claim_due(
                repo, self.node_id, names, free, on_claimed=self._dispatch, retries=retries
            )

        # Autocommit: the claim is one atomic statement and the next-due look-up only reads, so
        # BEGIN and COMMIT would be two more round trips on every pass. The claim is committed
        # when it returns, so its jobs start at once: before the look-up, and even if it fails.
        claimed, wait = await self.runtime.db(claim, Stream.CLAIM)
        return PollResult(len(claimed), free, wait)

    def _dispatch(self, claimed: list[ClaimedJob]) -> None:
        for job in claimed:
            self.dispatch(job)

    def start(self, *, immediately: bool = False) -> None:
        if immediately:
            self.wakeup.set()
        super().start()

    async def loop(self) -> None:
        await self.wakeup.wait(self.interval)
        failures = 0
        slot_bound = False
        while not self.stopping:
            if slot_bound:
                await self._gather_slots()
            # Clear before polling: a wake-up that arrives during the pass is kept for the next.
            self.wakeup.clear()
            try:
                result = await self.run_once()
                failures = 0
            except Exception as exc:
                failures += 1
                delay = failure_delay(failures, self.interval)
                self.errors.report("poll", exc, retry_in=delay)
                await self.wakeup.wait(delay)
                continue
            slot_bound = is_slot_bound(result)
            await self.wakeup.wait(sleep_after(result, self.interval))

    async def _gather_slots(self) -> None:
        """Woken because a slot came free while the node was full: give the other jobs that are
        ending at this moment a chance to free theirs, so the pass claims them together. Without
        it a busy node alternated between a pass for the one job that ended first and a pass for
        all the rest, each with its own round trip and WAL flush."""
        enough = max(1, self.cap // 2)
        deadline = time.monotonic() + GATHER_SECONDS
        # From now on an ending job wakes the poller only once ``enough`` slots are free. The
        # threshold is set before the look below: a job ending after the look sees it.
        self._wake_at_free = enough
        try:
            while True:
                # Clear, then look, then wait: a wake-up after the look is not lost.
                self.wakeup.clear()
                left = deadline - time.monotonic()
                if self.inflight.free_slots(self.cap) >= enough or left <= 0 or self.stopping:
                    return
                await self.wakeup.wait(left)
        finally:
            self._wake_at_free = 1


def claim_due(
    repo: JobRepository,
    node_id: str,
    names: Sequence[str],
    free: int,
    *,
    on_claimed: Callable[[list[ClaimedJob]], None] | None = None,
    retries: Sequence[int] | None = None,
) -> tuple[list[ClaimedJob], float | None]:
    """Claim up to ``free`` due jobs; when fewer were due, also learn how many seconds until the
    next one falls due (None: none known), to sleep exactly that long. ``on_claimed`` gets the
    claimed jobs between the two statements. ``retries``: the handlers' (see
    ``JobRepository.claim``)."""
    claimed = repo.claim(node_id, names, free, retries=retries)
    if claimed and on_claimed is not None:
        on_claimed(claimed)
    wait: float | None = None
    if len(claimed) < free:
        db_now, next_run = repo.next_due(names)
        if next_run is not None:
            wait = max(0.0, (next_run - db_now).total_seconds())
    return claimed, wait


def is_slot_bound(result: PollResult) -> bool:
    """Whether the pass was limited by free slots rather than by due jobs: more may be due."""
    return result.free_slots == 0 or (result.claimed > 0 and result.claimed == result.free_slots)


def sleep_after(result: PollResult, interval: float) -> float:
    """How long to sleep after a pass (a wake-up may end the sleep early)."""
    if is_slot_bound(result):
        # Slot-bound: more may be due. Poll again when a job finishes and frees a slot.
        return interval
    if result.wait_seconds is not None:
        return min(interval, result.wait_seconds + _DUE_MARGIN_SECONDS)
    return interval


def failure_delay(failures: int, interval: float) -> float:
    """Back-off after ``failures`` failed passes in a row."""
    return min(0.2 * 2.0**failures, interval, 10.0)
