"""The demo's node processes: ``pg-scheduler worker`` running ``app.node``, one log file each."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pg_scheduler.cli.base import URL_ENV

from .app import NODE_NAME_ENV, PARENT_PID_ENV, node

NODE_STOP_TIMEOUT = 20.0
#: What ``pg-scheduler worker`` runs in each node process: ``MODULE:ATTRIBUTE`` of ``app.node``.
NODE_APP = f"{node.__module__}:{node.__qualname__}"


@dataclasses.dataclass
class NodeProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


def start_nodes(url: str, count: int, log_dir: Path) -> list[NodeProcess]:
    """Start ``count`` ``pg-scheduler worker`` processes running ``NODE_APP``."""
    started = []
    for i in range(1, count + 1):
        name = f"node-{i}"
        log = log_dir / f"demo-{name}.log"
        env = {
            **os.environ,
            # The URL goes through the environment: a password on a command line shows in `ps`.
            URL_ENV: url,
            NODE_NAME_ENV: name,
            PARENT_PID_ENV: str(os.getpid()),
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", "pg_scheduler.cli", "worker", NODE_APP]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own session: the terminal's Ctrl-C reaches the demo only, which then stops the
                # nodes in order (SIGTERM, graceful shutdown) before it reads the summary.
                start_new_session=True,
            )
        started.append(NodeProcess(name, process, log))
    return started


def stop_nodes(nodes: Sequence[NodeProcess], timeout: float = NODE_STOP_TIMEOUT) -> dict[str, int]:
    """SIGTERM every node, wait for them (killing the ones that hang); their exit codes."""
    for n in nodes:
        if n.process.poll() is None:
            n.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes: dict[str, int] = {}
    for n in nodes:
        try:
            codes[n.name] = n.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            n.process.kill()
            codes[n.name] = n.process.wait()
    return codes


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def exited(nodes: Sequence[NodeProcess]) -> str | None:
    """Why the demo must stop early, if a node process has exited."""
    for n in nodes:
        if n.process.poll() is not None:
            return f"{n.name} exited with code {n.process.returncode}: {log_tail(n.log)}"
    return None
