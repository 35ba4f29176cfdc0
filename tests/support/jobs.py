"""Job classes shared by the node tests."""

from __future__ import annotations

import threading
import time

from pg_scheduler import Job, JobConfig, JobContext


class Recording(Job):
    """Records each run's context; optionally fails or sleeps."""

    def __init__(self, config: JobConfig, *, fail: bool = False, seconds: float = 0.0) -> None:
        super().__init__(config)
        self.calls: list[JobContext] = []
        self.fail = fail
        self.seconds = seconds
        self.lock = threading.Lock()

    def run(self, ctx: JobContext) -> None:
        with self.lock:
            self.calls.append(ctx)
        if self.seconds:
            time.sleep(self.seconds)
        if self.fail:
            raise ValueError(f"boom on attempt {ctx.attempt}")
