"""The node's record of its leases (``Inflight``): what the poller may claim."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

from pg_scheduler.node.inflight import Inflight
from pg_scheduler.node.running import RunningJob


def lease() -> RunningJob:
    claimed: Any = SimpleNamespace(lease_id=uuid.uuid4())
    return RunningJob(claimed, job=None, ctx=None)  # type: ignore[arg-type]


def test_a_slot_frees_when_the_code_ends_but_leases_stay_bounded() -> None:
    inflight = Inflight()
    jobs = [lease() for _ in range(4)]
    for job in jobs:
        inflight.add(job)
    assert inflight.free_slots(4) == 0

    inflight.end_code(jobs[0])  # its outcome is being written: its slot is free already
    assert inflight.free_slots(4) == 1

    # More jobs claimed into the freed slots, whose outcomes are not written yet either:
    for job in jobs[1:]:
        inflight.end_code(job)
    more = [lease() for _ in range(4)]
    for job in more:
        inflight.add(job)
    assert inflight.free_slots(4) == 0, "8 leases held: never more than twice the cap"

    inflight.remove(jobs[0].lease_id)  # one outcome written
    assert inflight.free_slots(4) == 0, "all four slots run code"
    inflight.end_code(more[0])
    assert inflight.free_slots(4) == 1
