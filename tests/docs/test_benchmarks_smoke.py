"""``python -m benchmarks --quick --only ours``: the benchmark runs end to end in CI time and
writes the JSON the README's table is made from."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def run_module(module: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """``python -m module arguments`` from the repository root; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=ROOT,
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_quick_benchmark_of_pg_scheduler_alone(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    started = time.monotonic()
    run_module("benchmarks", "--quick", "--only", "ours", "--json", str(out))
    elapsed = time.monotonic() - started
    payload = json.loads(out.read_text())
    assert payload["libraries"] == ["ours"]
    assert {"nproc", "loadavg_start", "loadavg_end", "postgresql"} <= set(payload["machine"])
    from benchmarks.__main__ import QUICK_SCENARIOS

    results = payload["results"]
    assert set(results) == set(QUICK_SCENARIOS)
    errors = {key: r["ours"] for key, r in results.items() if isinstance(r["ours"], str)}
    assert not errors, errors
    rows = {row["key"]: row for row in payload["rows"]}
    for key in (
        "enqueue_bulk",
        "drain_c32",
        "wakeup_now_median",
        "cron_median",
        "claim_ratio",
        "async_enqueue",
        "async_drain_c32",
    ):
        assert isinstance(rows[key]["values"]["ours"], float), key
    assert {"label", "unit", "target", "met", "ratio", "best_peer"} <= set(rows["drain_c32"])
    # The correctness figures hold even in a smoke run; speed is not judged here.
    assert rows["cron_duplicates"]["values"]["ours"] == 0
    assert rows["statements_per_job"]["values"]["ours"] < 1.0
    assert elapsed < 120, f"the quick run took {elapsed:.0f} s (budget: 60 s on a quiet machine)"


def test_rounds_repeat_the_ratio_scenarios_and_report_the_median(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = run_module(
        "benchmarks",
        *("--quick", "--only", "ours", "--scenarios", "enqueue_one_by_one", "idle"),
        *("--rounds", "3", "--json", str(out)),
    )
    payload = json.loads(out.read_text())
    rounds = payload["rounds"]
    assert set(rounds) == {"enqueue_one_by_one"}, "only the scenarios with a ratio target repeat"
    samples = rounds["enqueue_one_by_one"]["ours"]
    assert len(samples) == 3
    assert payload["results"]["enqueue_one_by_one"]["ours"] == sorted(samples)[1]
    assert done.stderr.count("[enqueue_one_by_one] ours") == 3
    assert done.stderr.count("[idle] ours") == 1


def test_async_scenarios_compare_the_async_scheduler_with_pgqueuer(tmp_path: Path) -> None:
    """Issue 19's two async figures, at tiny sizes: ``AsyncScheduler`` (psycopg async, and the
    asyncpg rows) against pgqueuer, both driven from asyncio. Needs the ``bench`` extra."""
    pytest.importorskip("pgqueuer", reason="the bench extra is not installed")
    pytest.importorskip("asyncpg")
    pytest.importorskip("greenlet", reason="async engines need sqlalchemy[asyncio]")
    out = tmp_path / "bench.json"
    scenarios = (
        "async_enqueue",
        "async_drain_c32",
        "async_enqueue_asyncpg",
        "async_drain_c32_asyncpg",
    )
    run_module(
        "benchmarks",
        *("--quick", "--only", "ours", "pgqueuer", "--scenarios", *scenarios),
        *("--json", str(out)),
    )
    payload = json.loads(out.read_text())
    results = payload["results"]
    assert set(results) == set(scenarios)
    assert set(results["async_drain_c32"]) == {"ours", "pgqueuer"}
    assert set(results["async_drain_c32_asyncpg"]) == {"ours"}, "pg_scheduler's rows alone"
    rows = {row["key"]: row for row in payload["rows"]}
    for key in scenarios:
        assert isinstance(rows[key]["values"]["ours"], float), (key, results[key])
    for key in ("async_enqueue", "async_drain_c32"):
        assert isinstance(rows[key]["values"]["pgqueuer"], float), (key, results[key])
        assert rows[key]["target"].endswith("pgqueuer"), rows[key]
        assert rows[key]["met"] in (True, False), "the verdict is given (speed is not judged here)"


@pytest.mark.parametrize(
    ("script", "arguments", "expected"),
    [
        ("profile_enqueue", ["--n", "20", "--rounds", "2"], "Scheduler.enqueue"),
        (
            "profile_drain",
            ["--jobs", "200", "--setup-sql", "ALTER TABLE job_runs SET (fillfactor = 50)"],
            "job_runs: 200 updates",
        ),
        ("profile_insert_cost", ["--n", "20", "--rounds", "1"], "no CHECK"),
        ("profile_insert_cost", ["--rounds", "2", "--batch", "5", "--temporary"], "PL/pgSQL"),
        ("profile_hot_path", ["--rounds", "1", "--jobs-per-round", "64"], "in all"),
        (
            "profile_big_table",
            ["--rows", "2000", "--rounds", "1", "--bulk", "200", "--one-by-one", "20"],
            "2,000 finished jobs in the table",
        ),
    ],
)
def test_profile_scripts_run(script: str, arguments: list[str], expected: str) -> None:
    """The profile scripts RESULTS.md quotes still run (each on its own embedded server)."""
    done = run_module(f"benchmarks.profiles.{script}", *arguments)
    assert expected in done.stdout
