"""What the poller, the heartbeat and maintenance share: a loop that a node starts in the
background on its runtime, wakes early, and stops between two passes.

Stopping lets the pass in progress finish instead of cancelling it: a claim whose commit was
interrupted could leave leased rows that no one runs until their lease expires. Only a pass that
outlives ``STOP_GRACE_SECONDS`` is cancelled (on asyncio; a thread cannot be).
"""

from __future__ import annotations

from collections.abc import Callable

from pg_scheduler.node.runtime import Runtime, Wakeup

#: How long ``stop()`` lets a pass in progress finish.
STOP_GRACE_SECONDS = 10.0


class Service:
    name = "service"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.wakeup: Wakeup = runtime.wakeup()
        self.stopping = False
        self._done: Wakeup = runtime.wakeup()
        self._cancel: Callable[[], None] | None = None

    def wake(self) -> None:
        """End the current sleep now (callable from any thread)."""
        self.wakeup.set()

    async def loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._cancel = self.runtime.serve(self._serve(), f"pg_scheduler-{self.name}")

    async def _serve(self) -> None:
        try:
            await self.loop()
        finally:
            self._done.set()

    async def stop(self) -> None:
        """Stop after the current pass; returns once the loop has ended (or was cancelled)."""
        self.stopping = True
        self.wakeup.set()
        cancel, self._cancel = self._cancel, None
        if cancel is None:
            return
        if not await self._done.wait(STOP_GRACE_SECONDS):
            cancel()
