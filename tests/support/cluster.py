"""Real node processes for tests: start them, signal them, read what they did from SQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pg_scheduler.naming import Names

NODEPROC = Path(__file__).with_name("nodeproc.py")

# Short timings so that a lease expires in seconds, not minutes.
FAST = {
    "job_check_interval": 1.0,
    "heartbeat_interval": 0.3,
    "no_heartbeat_timeout": 1.5,
    "shutdown_timeout": 5.0,
    "retry_backoff": 0.1,
}


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[str]
    node_id: str = ""
    output: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def log(self) -> str:
        return "".join(self.output)

    def count(self, text: str) -> int:
        """How many output lines contain ``text`` (e.g. an ``[event]`` suffix)."""
        return sum(text in line for line in list(self.output))

    def wait(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout)


class Cluster:
    def __init__(
        self,
        url: str,
        names: Names,
        engine: sa.Engine,
        *,
        admin: sa.Engine | None = None,
        grant_to: str | None = None,
    ) -> None:
        """``admin`` creates the effects table (default: ``engine``); ``grant_to`` is a runtime
        role that the nodes log in as, given DML on it."""
        self.url = url
        self.names = names
        self.engine = engine
        self.nodes: list[Node] = []
        with (admin or engine).begin() as conn:
            conn.exec_driver_sql(
                f"CREATE TABLE IF NOT EXISTS {names.prefix}effects ("
                "id bigserial PRIMARY KEY, job_key text NOT NULL, scheduled_at timestamptz NOT NULL,"
                " attempt int NOT NULL, node text NOT NULL, started_at timestamptz NOT NULL,"
                " finished_at timestamptz)"
            )
            if grant_to is not None:
                role = conn.dialect.identifier_preparer.quote_identifier(grant_to)
                conn.exec_driver_sql(
                    f"GRANT SELECT, INSERT, UPDATE ON {names.prefix}effects TO {role}"
                )
                conn.exec_driver_sql(
                    f"GRANT USAGE ON SEQUENCE {names.prefix}effects_id_seq TO {role}"
                )

    @property
    def effects(self) -> str:
        return f"{self.names.prefix}effects"

    def start(
        self,
        name: str,
        *,
        jobs: list[str] | None = None,
        recurring: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        wait_ready: bool = True,
        url: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Node:
        """Start a node process; ``url`` overrides the cluster's (e.g. a proxy in front of it) and
        ``extra`` adds keys to its ``PGS_NODE`` spec (``clock``, ``hooks``, ``pool_pre_ping``)."""
        spec = {
            "url": url or self.url,
            "prefix": self.names.prefix,
            "node_name": name,
            "jobs": jobs or [],
            "recurring": recurring or {},
            "config": {**FAST, **(config or {})},
            "connect_args": {"application_name": f"pg_scheduler:{name}"},
            **(extra or {}),
        }
        env = {**os.environ, "PGS_NODE": json.dumps(spec), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, str(NODEPROC)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        node = Node(name, proc)
        ready = node.ready

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                node.output.append(line)
                if line.startswith("READY "):
                    node.node_id = line.split()[1]
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        self.nodes.append(node)
        if wait_ready and not ready.wait(60):
            raise AssertionError(f"node {name} did not start:\n{node.log()}")
        return node

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None:
                node.send(signal.SIGCONT)
                node.send(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for node in self.nodes:
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()

    def query(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()
