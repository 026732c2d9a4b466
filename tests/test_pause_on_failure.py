"""``pause_after_failures``: an entry pauses itself after N failed runs in a row; resume clears it.

Real ``celery beat`` and ``celery worker`` (guard installed) on ZooKeeper; a task that always
fails. Asserted on what executed: exactly N runs, then none while paused, then exactly N more
after a resume (the count starts over), for a static and a runtime entry; the note reaches
``entry list``, ``entry history`` and the beat's log (one ERROR per pause).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient

from beatleader.entries.api import EntryStore
from beatleader.zk import layout
from tests.app import make_app
from tests.cluster import every, schedule_env
from tests.dedup_tasks import FAIL_TASK
from tests.harness import contenders, read_executions, wait_for

#: Seconds watched for runs that must not happen (several intervals of a 1 s entry).
QUIET = 3.0


def _executed(log: Path, name: str) -> int:
    return sum(e["name"] == name for e in read_executions(log))


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "beatleader.cli", *args, "-A", "tests.app"]
    return subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def _paused_and_quiet(log: Path, name: str, count: int) -> None:
    wait_for(lambda: _executed(log, name) >= count, 40, message=f"{count} runs of {name}")
    time.sleep(QUIET)  # an observation window: a paused entry runs no more
    assert _executed(log, name) == count


def test_a_static_and_a_runtime_entry_pause_after_failures_and_resume(
    beats: Any,
    workers: Any,
    zk_client: KazooClient,
    zk_root: str,
    execution_log: Path,
    beat_env: dict[str, str],
) -> None:
    workers(env={"TEST_DEDUP": "1"}).wait_ready()
    policy = {"beatleader": {"pause_after_failures": 3}}
    env = schedule_env(flaky=every(1, task=FAIL_TASK, args=["flaky"], options=policy))
    beat = beats(env=env)
    wait_for(lambda: (q := contenders(zk_client, zk_root)) and q[0]["pid"] == beat.pid, 30)
    entries = EntryStore(zk_client, zk_root, make_app({**beat_env, **env}, set_as_current=False))
    entries.add("rt", task=FAIL_TASK, every="1s", args=["rt"], pause_after_failures=2)

    _paused_and_quiet(execution_log, "flaky", 3)
    _paused_and_quiet(execution_log, "rt", 2)
    note = json.loads(zk_client.get(layout.paused_entry_path(zk_root, "flaky"))[0])
    assert note["runs"] == [1, 2, 3] and "RuntimeError: flaky fails on purpose" in note["reason"]
    stored = entries.get("rt")
    assert stored is not None and stored[0].enabled is False
    assert len(beat.log_matches(r"ERROR.*entry 'flaky' paused: 3 failed runs in a row")) == 1
    assert len(beat.log_matches(r"ERROR.*entry 'rt' paused: 2 failed runs in a row")) == 1

    listing = _cli({**beat_env, **env}, "entry", "list")
    assert listing.returncode == 0, listing.stderr
    assert "flaky paused: 3 failed runs in a row (runs 1, 2, 3)" in listing.stdout
    assert "rt paused: 2 failed runs in a row (runs 1, 2)" in listing.stdout
    history = _cli({**beat_env, **env}, "entry", "history", "flaky")
    assert "paused: 3 failed runs in a row" in history.stdout, history.stdout
    assert "skipped" in history.stdout  # the run the pause did not send

    status = _cli({**beat_env, **env}, "status")
    assert "entry 'flaky' paused itself: 3 failed runs in a row" in status.stdout, status.stdout
    doc = json.loads(_cli({**beat_env, **env}, "status", "--json").stdout)
    paused = {e["name"]: e["paused"] for e in doc["entries"]}
    assert paused["rt"] and paused["rt"].startswith("2 failed runs in a row")

    for name in ("flaky", "rt"):
        resumed = _cli({**beat_env, **env}, "entry", "resume", name)
        assert resumed.returncode == 0, resumed.stderr
    _paused_and_quiet(execution_log, "flaky", 6)  # the count started over: 3 more, then paused
    _paused_and_quiet(execution_log, "rt", 4)
    assert len(beat.log_matches(r"ERROR.*entry 'flaky' paused")) == 2
    note = json.loads(zk_client.get(layout.paused_entry_path(zk_root, "flaky"))[0])
    assert note["runs"] == [4, 5, 6]
