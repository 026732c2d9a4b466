"""Runtime entries with real ``celery beat`` and ``celery worker`` processes; executions counted.

The beats run ``beatleader.Scheduler`` on the suite's ZooKeeper and kombu's filesystem broker; a
worker executes ``tests.app.record``, which appends ``{"name": <first arg>, "id": <task id>}``
to the execution log. The definitions, pauses and run-now requests are written while the beats
run, with ``beatleader.entries`` (what ``beatleader entry`` uses); hostile nodes with a plain
client. Every
assertion is on what the worker executed: task ids are exactly runs 1..N of each entry (nothing
twice, no ordinal skipped) and the counts are exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from beatleader.entries.api import EntryStore
from beatleader.zk import layout
from tests.app import RECORD_TASK, make_app
from tests.cluster import every, schedule_env
from tests.harness import contenders, entry_state, read_executions, wait_for
from tests.runtime_support import put_raw, requests

FAULTS = "tests.app.FaultScheduler"
#: Seconds to watch that nothing more is executed (several intervals of a 1 s entry).
QUIET = 3.0


class Executions:
    """What the worker executed, by entry: the ordinals of the task ids it ran, in order."""

    def __init__(self, log: Path, root: str, client: KazooClient) -> None:
        self.log, self.root, self.client = log, root, client

    def known(self, entry: str) -> dict[str, int]:
        """Task id -> ordinal of runs 1..499 of ``entry``'s stored incarnation."""
        incarnation = (entry_state(self.client, self.root, entry) or {}).get("incarnation")
        return {layout.run_task_id(self.root, entry, n, incarnation): n for n in range(1, 500)}

    def ordinals(self, entry: str) -> list[int]:
        known = self.known(entry)
        return [known[e["id"]] for e in read_executions(self.log) if e["id"] in known]

    def names(self, entry: str) -> list[str]:
        known = self.known(entry)
        return [e["name"] for e in read_executions(self.log) if e["id"] in known]

    def wait(self, entry: str, count: int, timeout: float = 20) -> list[int]:
        found: list[int] = wait_for(
            lambda: (o := self.ordinals(entry)) and len(o) >= count and o,
            timeout,
            message=f"{count} execution(s) of {entry!r}",
        )
        return found

    def exact(self, entry: str) -> list[int]:
        """The ordinals executed, asserting they are 1..N, each once."""
        found = self.ordinals(entry)
        assert found == list(range(1, len(found) + 1)), f"{entry}: {found}"
        return found

    def quiet(self, entry: str, allowed: int = 0) -> int:
        """Watch ``QUIET`` seconds; returns the count, at most ``allowed`` more than before."""
        before = len(self.ordinals(entry))
        time.sleep(QUIET)  # an observation window: nothing may happen in it
        after = len(self.ordinals(entry))
        assert after - before <= allowed, f"{entry}: {after - before} more executions"
        return after


def entry_store(zk_client: Any, zk_root: str, env: dict[str, str]) -> EntryStore:
    """The write side of ``beatleader entry``, for the app the beats run (``env``)."""
    return EntryStore(zk_client, zk_root, make_app(env, set_as_current=False))


def leading(beat: Any, zk_client: Any, zk_root: str) -> None:
    wait_for(
        lambda: (queue := contenders(zk_client, zk_root)) and queue[0]["pid"] == beat.pid,
        30,
        message="the beat leads",
    )
    beat.wait_for_log(r"beatleader: leading", 30)


def test_runtime_definitions_added_updated_paused_resumed_removed(
    beats, workers, zk_client, zk_root, execution_log
) -> None:
    runs = Executions(execution_log, zk_root, zk_client)
    workers().wait_ready()
    env = schedule_env(hourly=every(3600))
    store = entry_store(zk_client, zk_root, env)
    beat = beats(env=env)
    leading(beat, zk_client, zk_root)

    put_raw(zk_client, zk_root, "broken", b'{"task": 7}')  # hostile: reported, stops nothing
    store.add("dyn", task=RECORD_TASK, every="1s", args=["v1"])
    runs.wait("dyn", 2)
    changed_at = time.monotonic()
    store.update("dyn", args=["v2"])
    beat.wait_for_log(r"entry 'dyn' changed", 10)
    applied = time.monotonic() - changed_at  # the beat's loop sleeps at most 1 s
    wait_for(lambda: "v2" in runs.names("dyn"), 20, message="the worker runs the new args")
    assert store.pause("dyn") == "runtime"
    beat.wait_for_log(r"entry 'dyn' removed", 10)
    paused = runs.quiet("dyn", allowed=1)  # at most the run committed before the change
    store.update("dyn", args=["v3"])  # changed while paused: not scheduled
    runs.quiet("dyn")
    store.resume("dyn")
    runs.wait("dyn", paused + 2)
    store.remove("dyn")
    beat.wait_for_log(r"entry 'dyn' removed", 10, count=2)
    runs.quiet("dyn", allowed=1)
    runs.quiet("dyn")

    executed = runs.exact("dyn")
    names = runs.names("dyn")
    assert names == sorted(names) and set(names) == {"v1", "v2", "v3"}  # each change, in order
    state = entry_state(zk_client, zk_root, "dyn")
    assert state is not None and state["total_run_count"] == len(executed)  # kept on removal
    assert applied < 2.5, f"a change applied {applied:.2f} s after it was written"
    assert beat.log_matches(r"runtime entry 'broken' ignored")
    assert runs.ordinals("hourly") == []


def test_run_now_one_off_and_pause_of_a_static_entry(
    beats, workers, zk_client, zk_root, execution_log, beat_env
) -> None:
    runs = Executions(execution_log, zk_root, zk_client)
    workers().wait_ready()
    env = schedule_env(hourly=every(3600), fast=every(1))
    store = entry_store(zk_client, zk_root, env)
    beat = beats(env=env)
    leading(beat, zk_client, zk_root)
    at = datetime.now(timezone.utc) + timedelta(seconds=3)
    store.add("once", task=RECORD_TASK, at=at, args=["once"])

    store.run("hourly")
    assert runs.wait("hourly", 1) == [1]  # the next ordinal, through the outbox
    runs.wait("fast", 2)
    assert store.pause("fast") == "static"
    beat.wait_for_log(r"static entry 'fast' paused", 10)
    before = runs.quiet("fast", allowed=1)
    store.run("fast")  # a paused entry runs now, and stays paused
    runs.wait("fast", before + 1)
    runs.quiet("fast")
    store.resume("fast")
    runs.wait("fast", before + 3)
    assert runs.wait("once", 1) == [1]
    cli = [sys.executable, "-m", "beatleader.cli", "entry", "run", "hourly", "-A", "tests.app"]
    done = subprocess.run(
        cli, env={**os.environ, **beat_env, **env}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr  # the command line, as the docs write it
    runs.wait("hourly", 2)
    runs.quiet("once")
    runs.quiet("hourly")

    assert runs.exact("hourly") == [1, 2]
    assert runs.exact("once") == [1]  # one-off: once, then done
    runs.exact("fast")
    assert requests(zk_client, zk_root) == []
    once = entry_state(zk_client, zk_root, "once")
    assert once is not None and once["total_run_count"] == 1
    assert datetime.fromisoformat(once["last_run_at"]) >= at


@pytest.mark.slow
def test_requests_and_definitions_survive_a_leader_kill(
    beats, workers, zk_client, zk_root, execution_log, broker_dir
) -> None:
    runs = Executions(execution_log, zk_root, zk_client)
    env = schedule_env(hourly=every(3600), fast=every(1))
    store = entry_store(zk_client, zk_root, env)
    store.pause("fast")  # before any beat: the takeover reads it
    doomed = beats(env={**env, "TEST_PAUSE_BEFORE_PUBLISH": "60"}, scheduler=FAULTS)
    leading(doomed, zk_client, zk_root)
    successor = beats(env=env)
    wait_for(lambda: len(contenders(zk_client, zk_root)) == 2, 30, message="2 contenders")
    workers().wait_ready()
    doomed.wait_for_log(r"static entry 'fast' paused", 10)

    store.add("bad", task=RECORD_TASK, every=1, args=["b"], enabled=False)  # not due yet
    store.run("hourly")
    doomed.wait_for_log(r"test: pausing before publishing", 20)  # run 1 committed, not sent
    assert requests(zk_client, zk_root) == []  # consumed by that commit
    doomed.kill()
    # while no leader is alive: a request, a new definition, a hostile rewrite of one
    store.run("hourly")
    store.add("late", task=RECORD_TASK, every="1s", args=["late"])
    put_raw(zk_client, zk_root, "bad", b"\x00 not a definition")
    leading(successor, zk_client, zk_root)

    assert runs.wait("hourly", 2) == [1, 2]
    runs.wait("late", 2)
    runs.quiet("hourly")

    assert runs.exact("hourly") == [1, 2]  # the inherited run once, the new request once
    runs.exact("late")
    assert runs.ordinals("fast") == []  # still paused under the successor
    assert runs.ordinals("bad") == []
    assert successor.log_matches(r"runtime entry 'bad' ignored")
    messages = Counter(
        json.loads(path.read_text())["headers"]["id"]
        for folder in (broker_dir, broker_dir / "processed")
        for path in folder.glob("*.msg")
    )
    hourly = list(runs.known("hourly"))[:2]
    assert [messages[task_id] for task_id in hourly] == [1, 1]  # each published once
