"""The thread runtime's way of running the node's coroutines without an event loop: ``drive`` runs
one to its end in the calling thread, ``launch`` lets an attempt park on a ``Later`` until another
thread settles it (an outcome written with its group)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from pg_scheduler.runtime.threads import Later, ThreadWakeup, drive, launch
from pg_scheduler.testing import wait_until


async def add(a: int, b: int) -> int:
    return a + b


def test_drive_runs_a_coroutine_that_never_parks_to_its_end() -> None:
    async def twice() -> int:
        return await add(1, 2) + await add(3, 4)

    assert drive(twice()) == 10


def test_drive_refuses_a_coroutine_that_parks() -> None:
    async def parks() -> None:
        await Later()

    with pytest.raises(RuntimeError, match="parked"):
        drive(parks())


def test_a_later_settled_before_it_is_awaited_does_not_park() -> None:
    later = Later()
    later.settle("written")

    async def attempt() -> str:
        return str(await later)

    assert drive(attempt()) == "written"


def test_a_parked_attempt_goes_on_in_the_thread_that_settles_it() -> None:
    later = Later()
    seen: list[tuple[str, str]] = []

    async def attempt() -> None:
        value = await later
        seen.append((value, threading.current_thread().name))

    launch(attempt())  # parks: launch returns at once, nothing seen yet
    assert seen == []
    writer = threading.Thread(target=later.settle, args=("written",), name="writer")
    writer.start()
    writer.join()
    assert seen == [("written", "writer")]


def test_a_later_settled_while_the_attempt_parks_is_taken_up_at_once() -> None:
    # The race ``park`` closes: settled after the await looked but before the coroutine parked.
    later = Later()
    seen: list[str] = []

    class SettlesOnPark(Later):
        def park(self, coro: Any) -> bool:
            later.settle("raced")
            return later.park(coro)

    racing = SettlesOnPark()

    async def attempt() -> None:
        await racing
        seen.append("went on")

    # The attempt awaits ``racing``; its park settles ``later`` first and parks there: settled,
    # so launch goes on in this thread with the value.
    launch(attempt())
    assert seen == ["went on"]


def test_whatever_escapes_an_attempt_is_logged_and_the_thread_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR):
        launch(fails())
    assert any(r.__dict__.get("event") == "worker.error" for r in caplog.records)


def test_a_thread_wakeup_ends_a_wait_early() -> None:
    wakeup = ThreadWakeup()
    woke: list[bool] = []

    def wait() -> None:
        woke.append(drive(wakeup.wait(30)))

    waiter = threading.Thread(target=wait)
    waiter.start()
    wakeup.set()
    waiter.join(timeout=10)
    wait_until(lambda: woke == [True], timeout=5)
    assert drive(ThreadWakeup().wait(0.01)) is False
