"""The soak (benchmarks/soak.py) with a short duration: random kill -9 and restart of nodes while
one-time and per-second jobs run. Locally, run it longer: ``python -m benchmarks.soak``."""

from __future__ import annotations

import pytest

from benchmarks.soak import run
from tests.faults.conftest import FaultServer, write_measurement

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def test_soak_short(fault_db: FaultServer) -> None:
    result = run(fault_db.url, duration=20, jobs=2000, drain_timeout=60)
    print(result.line())
    write_measurement("soak 20 s", line=result.line(), recoveries=result.recoveries)
    assert result.kills >= 3
    assert result.lost == 0 and result.duplicate_ticks == 0
    assert result.unfinished == 0, result.line()
    assert result.completed + result.failed == result.enqueued
