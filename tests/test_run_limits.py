"""``max_runs`` and ``end_at`` with real ``celery beat`` and ``celery worker`` processes.

Static 1 s entries: one with ``max_runs: 3``, one with ``end_at`` 8.5 s after the test starts.
Asserted on what the worker executed (exactly 3 runs; exactly the runs scheduled up to
``end_at``) and that ``status`` shows both as done (no next due time, no overdue problem) and
the runs-metrics export no period for them (the overdue alert cannot fire).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient

from beatleader.ops.health import entry_problem
from beatleader.ops.render import entry_table
from beatleader.ops.status import read_status
from beatleader.runs.history import read_history
from tests.cluster import every, schedule_env
from tests.harness import entry_state, read_executions, wait_for


def _executed(log: Path, name: str) -> int:
    return sum(line["name"] == name for line in read_executions(log))


def test_max_runs_and_end_at_end_an_entry_and_status_shows_it_done(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, execution_log: Path
) -> None:
    end_at = datetime.now(timezone.utc) + timedelta(seconds=8.5)  # past a slow start
    env = schedule_env(
        three=every(1, options={"beatleader": {"max_runs": 3}}),
        ending=every(1, options={"beatleader": {"end_at": end_at.isoformat()}}),
        going=every(1),
    )
    workers(env={"TEST_DEDUP": "1"}).wait_ready()
    beat = beats(env=env)

    def done(name: str) -> bool:
        entry = next((e for e in read_status(zk_client, zk_root).entries if e.name == name), None)
        return entry is not None and entry.done

    wait_for(lambda: done("three") and done("ending"), 30, message="both done")
    count = (entry_state(zk_client, zk_root, "ending") or {})["total_run_count"]
    going = _executed(execution_log, "going")
    wait_for(lambda: _executed(execution_log, "going") >= going + 3, 30, message="3 more runs")
    status = read_status(zk_client, zk_root)  # while the beat runs: its schedule is known
    assert _executed(execution_log, "three") == 3
    assert (entry_state(zk_client, zk_root, "three") or {})["total_run_count"] == 3
    ending = entry_state(zk_client, zk_root, "ending") or {}
    assert ending["total_run_count"] == count and _executed(execution_log, "ending") == count
    last = datetime.fromisoformat(ending["last_run_at"])
    assert last <= end_at < last + timedelta(seconds=1)  # every run scheduled up to end_at ran
    assert count >= 2  # the beat starts in a few seconds, slower on a loaded machine
    shown = {e.name: e for e in status.entries}
    assert shown["three"].next_due is None and shown["ending"].next_due is None
    assert not shown["going"].done
    assert "done" in entry_table(status.entries, wide=False)
    for name in ("three", "ending"):  # long after their last run: done, not overdue
        history = read_history(zk_client, zk_root, name)
        assert entry_problem(status, history, now=last.timestamp() + 3600) is None
    beat.terminate()
    beat.wait_exit(30)
    assert _executed(execution_log, "three") == 3
