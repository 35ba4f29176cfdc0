"""``pg-scheduler demo``: it runs a two-node cluster and its summary, read from the database,
shows no tick ran twice and every one-time job ended as planned."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pg_scheduler.testing import wait_until

VERDICT = re.compile(
    r"demo (?P<word>OK|FAILED)(?P<note> \(interrupted\))?: (?P<ticks>\d+) ticks? run, "
    r"(?P<duplicates>\d+) duplicate ticks?, (?P<overlapping>\d+) overlapping runs?, "
    r"(?P<jobs_ok>\d+)/(?P<jobs>\d+) one-time jobs as expected, "
    r"(?P<nodes_ok>\d+)/(?P<nodes>\d+) nodes stopped cleanly"
)
TIMEOUT = 300


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pg_scheduler.cli", "demo", *args]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PG_SCHEDULER_DATABASE_URL", None)  # the demo must not pick it up by itself
    return env


def verdict(output: str) -> dict[str, str]:
    found = VERDICT.search(output)
    assert found is not None, output
    return found.groupdict()


def assert_proved(output: str) -> dict[str, str]:
    v = verdict(output)
    assert v["word"] == "OK", output
    assert v["duplicates"] == "0" and v["overlapping"] == "0"
    assert int(v["ticks"]) >= 3, output
    assert v["jobs_ok"] == v["jobs"] == "6"
    assert v["nodes_ok"] == v["nodes"] == "2"
    return v


@pytest.mark.slow
def test_demo_against_a_given_server(pg_scheduler_url: str, tmp_path: Path) -> None:
    result = subprocess.run(
        demo_command("--duration", "8", "--url", pg_scheduler_url, "--data-dir", str(tmp_path)),
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert_proved(result.stdout)
    # Not a terminal: plain progress lines instead of the live view.
    assert re.search(r"^\s+\d+\.\ds\s+ticks run \d+", result.stdout, re.MULTILINE), result.stdout
    assert "flaky_import" in result.stdout and "failed, failed, completed" in result.stdout
    assert (tmp_path / "demo-node-1.log").exists() and (tmp_path / "demo-node-2.log").exists()
    assert not (tmp_path / "pgdata").exists()  # a URL was given: no embedded server


@pytest.mark.slow
def test_demo_on_the_embedded_server_reuses_its_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    for _ in range(2):  # the second run reuses the first one's server data, and resets the tables
        result = subprocess.run(
            demo_command("--duration", "8", "--data-dir", str(data_dir)),
            env=environment(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        assert f"embedded, data in {data_dir}" in result.stdout
        assert_proved(result.stdout)
    assert (data_dir / "pgdata" / "PG_VERSION").exists()


@pytest.mark.slow
def test_demo_stops_gracefully_on_ctrl_c_and_still_prints_the_summary(
    pg_scheduler_url: str, tmp_path: Path
) -> None:
    process = subprocess.Popen(
        demo_command("--url", pg_scheduler_url, "--data-dir", str(tmp_path)),  # no --duration
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        lines.extend(line.rstrip("\n") for line in process.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(
            lambda: (
                any("one-time jobs done 6/6" in line for line in lines)
                or process.poll() is not None
            ),
            timeout=TIMEOUT,
            message="every one-time job done",
        )
        process.send_signal(signal.SIGINT)
        code = process.wait(TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(10)
    output = "\n".join(lines)
    assert code == 0, output
    v = assert_proved(output)
    assert v["note"] == " (interrupted)"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_live_view_fits_an_80x24_terminal(pg_scheduler_url: str, tmp_path: Path) -> None:
    """The demo in a real pseudo-terminal of 80x24, its output fed to a terminal emulator: the
    screen shows the jobs and the recent runs, with every job's line whole."""
    import fcntl
    import pty
    import struct
    import termios

    import pyte

    screen = pyte.Screen(80, 24)
    stream = pyte.ByteStream(screen)
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**environment(), "TERM": "xterm", "COLUMNS": "80", "LINES": "24"}
    process = subprocess.Popen(
        demo_command("--duration", "30", "--url", pg_scheduler_url, "--data-dir", str(tmp_path)),
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    seen: list[list[str]] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal's last writer is gone
                return
            if not chunk:
                return
            stream.feed(chunk)
            seen.append(list(screen.display))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def settled() -> list[str] | None:
        for display in reversed(seen[-20:]):
            text = "\n".join(display)
            if "recent runs" in text and "completed   3/3" in text:
                return display
        return None

    try:
        display = wait_until(settled, timeout=TIMEOUT, message="the live view with every job")
        process.send_signal(signal.SIGINT)
        process.wait(TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(10)
        os.close(controller)
    text = "\n".join(display)
    assert re.search(r"pg-scheduler demo\s+\d+/30s\s+ticks \d+\s+twice 0", text), text
    # One line per job, none folded: every one-time job shows its name and its status.
    for name in ("flaky_import", "resize_image", "send_email"):
        assert re.search(rf"^{name}#…\w{{4}}\s+(pending|running|completed|failed)", text, re.M), (
            text
        )
