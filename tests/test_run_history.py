"""Run history: what the worker guard and the leader record about each run, read back.

On a real ZooKeeper: the claim store's markers carry the run's record and the newest
``beatleader_history_size`` survive the retention; the reader merges claims, markers and the
leader's records and survives hostile nodes. With real ``celery beat`` and ``celery worker``
processes: ``beatleader entry history`` shows what each run did, with and without the guard.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from beatleader.entries.api import EntryStore
from beatleader.runs.history import read_history, read_latest
from beatleader.runs.records import Outcome, error_summary, marker_fields
from beatleader.worker.claims import ClaimPolicy, ClaimStore, RunKey
from beatleader.worker.claims import Outcome as Finish
from beatleader.zk import layout
from tests.app import RECORD_TASK, make_app
from tests.cluster import every, schedule_env
from tests.dedup_tasks import FAIL_TASK
from tests.harness import ZooKeeperServer, connected_client, contenders, wait_for

OWNER = {"task_id": "t", "host": "h", "pid": 1}


class QuickPolicy(ClaimPolicy):
    prune_every = 4


@pytest.fixture
def store(zk_server: ZooKeeperServer, zk_root: str) -> Iterator[ClaimStore]:
    with connected_client(zk_server.hosts, timeout=2) as client:
        yield ClaimStore(client, zk_root, 0.001, QuickPolicy, keep=6)


def _state(client: KazooClient, root: str, name: str, **fields: Any) -> layout.EntryState:
    state = layout.EntryState(
        last_run_at=layout.utc_now_iso(),
        total_run_count=fields.pop("total_run_count", 0),
        last_task_id=None,
        written_by="test",
        **fields,
    )
    path = layout.entry_path(root, name)
    if client.exists(path):
        client.set(path, state.encode())
    else:
        client.create(path, state.encode(), makepath=True)
    return state


def _run(
    store: ClaimStore, name: str, ordinal: int, finish: Finish, error: str | None = None
) -> None:
    key = RunKey(layout.dedup_folder(name, "abcdabcdabcdabcd"), ordinal, name, f"id-{ordinal}")
    store.acquire(key, 0, {**OWNER, "task_id": key.task_id})
    store.finish(key, finish, 0, marker_fields(None, 0.25, "worker-1", 42, error))


def test_markers_carry_the_record_and_the_newest_survive_the_retention(
    store: ClaimStore, zk_root: str
) -> None:
    client = store.client
    recent = tuple([n, 1_700_000_000.0 + n, "sent"] for n in range(1, 13))
    _state(client, zk_root, "e", total_run_count=12, incarnation="abcdabcdabcdabcd", recent=recent)
    for ordinal in range(1, 13):
        time.sleep(0.002)  # past the retention (1 ms, ZooKeeper's clock): only `keep` protects
        if ordinal in (3, 11):
            error = error_summary(ValueError(f"bad {ordinal}\nsecond line"))
            _run(store, "e", ordinal, Finish.FAILED, error)
        else:
            _run(store, "e", ordinal, Finish.DONE)
    folder = f"{layout.dedup_path(zk_root)}/{layout.dedup_folder('e', 'abcdabcdabcdabcd')}"
    markers = sorted(int(c[1:]) for c in client.get_children(folder) if c.startswith("d"))
    assert markers[-6:] == list(range(7, 13)) and min(markers) >= 3  # pruned at 4, 8, 12
    assert markers[0] > 1

    history = read_history(client, zk_root, "e", limit=5)
    assert history.guarded and history.exists
    assert [r.ordinal for r in history.records] == [12, 11, 10, 9, 8]
    newest, failed = history.records[0], history.records[1]
    assert newest.outcome is Outcome.SUCCEEDED and newest.duration == 0.25
    assert newest.host == "worker-1" and newest.pid == 42 and newest.task_id == "id-12"
    assert newest.due_at == 1_700_000_012.0
    assert newest.started_at is not None and newest.finished_at is not None
    assert abs(newest.finished_at - time.time()) < 60  # server time, as a plausible epoch
    assert failed.outcome is Outcome.FAILED and failed.error == "ValueError: bad 11"

    # a run the leader sent that no worker recorded yet, one it skipped, one that is running
    recent += ([None, 1_700_000_012.5, "skipped:overlap"], [13, 1_700_000_013.0, "sent"])
    recent += ([14, 1_700_000_014.0, "sent"],)
    _state(client, zk_root, "e", total_run_count=14, incarnation="abcdabcdabcdabcd", recent=recent)
    key = RunKey(layout.dedup_folder("e", "abcdabcdabcdabcd"), 13, "e", "id-13")
    store.acquire(key, 0, {**OWNER, "task_id": "id-13"})
    records = read_history(client, zk_root, "e", limit=4).records
    assert [(r.ordinal, r.outcome) for r in records] == [
        (14, Outcome.SENT),
        (13, Outcome.RUNNING),
        (None, Outcome.SKIPPED),
        (12, Outcome.SUCCEEDED),
    ]
    assert records[2].reason == "overlap" and records[1].host == "h"
    states = {"e": layout.EntryState.decode(client.get(layout.entry_path(zk_root, "e"))[0])}
    latest = read_latest(client, zk_root, {k: v for k, v in states.items() if v is not None})
    assert latest["e"].ordinal == 13 and latest["e"].outcome is Outcome.RUNNING


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xfe not json",
        b"[" * 50_000 + b"]" * 50_000,  # deeper than the JSON parser's recursion limit
        json.dumps({"state": ["done"], "duration": "long", "host": 7, "pid": 1.5}).encode(),
        json.dumps({"host": "x" * 900_000, "error": "e" * 10_000, "state": "failed"}).encode(),
        b"",
    ],
    ids=["binary", "deep", "wrong-types", "huge", "empty"],
)
def test_hostile_records_read_as_no_record_never_an_error(
    zk_client: KazooClient, zk_root: str, garbage: bytes
) -> None:
    name = "hostile"
    recent = ([1, "soon", "sent"], ["x", 2, "sent"], [3, 3.0, {"k": 1}], [None, 4.0, "skipped"])
    _state(zk_client, zk_root, name, total_run_count=3, recent=recent)
    raw = json.loads(zk_client.get(layout.entry_path(zk_root, name))[0])
    raw["recent"] = [*raw["recent"], "not a list", [1, 2], {"a": 1}]  # kept out by the parser
    zk_client.set(layout.entry_path(zk_root, name), json.dumps(raw).encode())
    folder = f"{layout.dedup_path(zk_root)}/{layout.dedup_folder(name)}"
    for child in ("d00000000000000000001", "r00000000000000000002", "dxyz", "q1"):
        zk_client.create(f"{folder}/{child}", garbage, makepath=True)
    history = read_history(zk_client, zk_root, name, limit=10)
    by_ordinal = {r.ordinal: r for r in history.records}
    assert by_ordinal[2].outcome is Outcome.RUNNING and by_ordinal[1].finished_at is not None
    for record in history.records:
        json.dumps(record.as_json())  # every field is plain JSON
        assert record.host is None or len(record.host) <= 255
        assert record.error is None or len(record.error) <= 200
    state = layout.EntryState.decode(zk_client.get(layout.entry_path(zk_root, name))[0])
    assert state is not None
    read_latest(zk_client, zk_root, {name: state})
    garbage_state = b"[" * 50_000
    zk_client.set(layout.entry_path(zk_root, name), garbage_state)
    assert read_history(zk_client, zk_root, name).exists is False  # unreadable: as no state


def _leading(beat: Any, zk_client: KazooClient, zk_root: str) -> None:
    wait_for(
        lambda: (queue := contenders(zk_client, zk_root)) and queue[0]["pid"] == beat.pid,
        30,
        message="the beat leads",
    )


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "beatleader.cli", *args, "-A", "tests.app"]
    return subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def test_entry_history_shows_what_each_run_did(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, beat_env: dict[str, str]
) -> None:
    env = schedule_env(hourly=every(3600))
    worker = workers(env={"TEST_DEDUP": "1"})
    worker.wait_ready()
    beat = beats(env=env)
    _leading(beat, zk_client, zk_root)
    entries = EntryStore(zk_client, zk_root, make_app({**beat_env, **env}, set_as_current=False))
    entries.add("ok", task=RECORD_TASK, every="1s", args=["ok"])
    entries.add("bad", task=FAIL_TASK, every="1s", args=["bad"])

    def finished(name: str, count: int) -> bool:
        done = [
            r for r in entries.history(name).records if r.outcome.value in ("succeeded", "failed")
        ]
        return len(done) >= count

    wait_for(lambda: finished("ok", 3) and finished("bad", 3), 40, message="3 runs of each")
    ok = [r for r in entries.history("ok").records if r.outcome is Outcome.SUCCEEDED]
    assert all(r.duration is not None and 0 <= r.duration < 5 for r in ok)
    assert all(r.host and r.pid and r.started_at and r.due_at for r in ok), ok
    assert all(r.started_at >= r.due_at - 1 for r in ok if r.started_at and r.due_at)
    bad = [r for r in entries.history("bad").records if r.outcome is Outcome.FAILED]
    assert bad and all(r.error == "RuntimeError: bad fails on purpose" for r in bad)

    shown = _cli({**beat_env, **env}, "entry", "history", "bad", "-n", "3")
    assert shown.returncode == 0, shown.stderr
    assert "failed" in shown.stdout and "RuntimeError: bad fails on purpose" in shown.stdout
    assert len(shown.stdout.splitlines()) == 5 and "note:" not in shown.stdout  # title, head, 3
    assert all(len(line) <= 100 for line in shown.stdout.splitlines())
    as_json = _cli({**beat_env, **env}, "entry", "history", "ok", "--json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["guarded"] is True and document["runs"][0]["ordinal"] >= 3
    # Paused, so the newest run stays the newest: while runs come every second, status may show
    # one sent and not yet started (outcome "-"; seen under load). Its outcome, once it ran:
    entries.pause("ok")
    entries.pause("bad")

    def settled() -> str:
        shown = _cli({**beat_env, **env}, "status").stdout
        rows = {line.split()[0]: line for line in shown.splitlines() if line.startswith("  ")}
        done = " failed " in rows.get("bad", "") and " succeeded " in rows.get("ok", "")
        return shown if done else ""

    status = wait_for(settled, 30, interval=0.5, message="status shows each newest run's outcome")
    assert [line for line in status.splitlines()[1:] if len(line) > 100] == [], status
    status_json = json.loads(_cli({**beat_env, **env}, "status", "--json").stdout)
    by_name = {e["name"]: e for e in status_json["entries"]}
    assert by_name["bad"]["last_record"]["error"] == "RuntimeError: bad fails on purpose"
    assert by_name["ok"]["last_outcome"] == "succeeded"
    for args, message in [
        (("entry", "history", "nosuch"), "no such entry"),
        (("entry", "history", "ok", "-n", "0"), "-n/--limit must be at least 1"),
        (("entry", "history", "ok", "-n", "x"), "-n/--limit 'x' is not an integer"),
    ]:
        refused = _cli({**beat_env, **env}, *args)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1


def test_without_the_guard_the_history_is_what_the_leader_sent(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, beat_env: dict[str, str]
) -> None:
    env = schedule_env(fast=every(1))
    workers().wait_ready()
    beat = beats(env=env)
    _leading(beat, zk_client, zk_root)
    wait_for(lambda: len(read_history(zk_client, zk_root, "fast").records) >= 3, 30)
    history = read_history(zk_client, zk_root, "fast")
    assert not history.guarded and history.note and "worker guard" in history.note
    assert {r.outcome for r in history.records} == {Outcome.SENT}
    ordinals = [r.ordinal for r in history.records]
    assert ordinals == sorted(ordinals, reverse=True) and len(set(ordinals)) == len(ordinals)
    shown = _cli({**beat_env, **env}, "entry", "history", "fast")
    assert shown.returncode == 0 and "note: no worker recorded a run" in shown.stdout


def test_the_history_of_an_entry_pruned_and_added_again_is_its_new_life(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, beat_env: dict[str, str]
) -> None:
    from beatleader.ops.prune import plan_prune, prune

    env = schedule_env(hourly=every(3600))
    workers(env={"TEST_DEDUP": "1"}).wait_ready()
    beat = beats(env=env)
    _leading(beat, zk_client, zk_root)
    entries = EntryStore(zk_client, zk_root, make_app({**beat_env, **env}, set_as_current=False))

    def succeeded() -> list[int | None]:
        records = entries.history("again").records
        return [r.ordinal for r in records if r.outcome is Outcome.SUCCEEDED]

    entries.add("again", task=RECORD_TASK, every="1s", args=["again"])
    wait_for(lambda: len(succeeded()) >= 3, 30, message="3 runs of the first life")
    first = entries.history("again").incarnation
    entries.remove("again")
    beat.wait_for_log(r"entry 'again' removed", 10)

    def pruned() -> bool:  # a mark written after the removal keeps it once: plan again
        stale = [s for s in plan_prune(zk_client, zk_root) if s.name == "again"]
        return bool(stale) and bool(prune(zk_client, zk_root, stale).deleted)

    wait_for(pruned, 30, message="the state pruned")
    entries.add("again", task=RECORD_TASK, every="1s", args=["again"])
    wait_for(lambda: entries.history("again").incarnation not in (None, first), 30)
    wait_for(lambda: len(succeeded()) >= 2, 30, message="2 runs of the second life")
    history = entries.history("again")
    ordinals = [r.ordinal for r in history.records]
    assert ordinals == list(range(len(ordinals), 0, -1)), ordinals  # n..1: the new life only
    assert all(r.task_id == layout.run_task_id(zk_root, "again", r.ordinal, history.incarnation)
               for r in history.records if r.task_id)  # fmt: skip


def test_hostile_history_nodes_stop_no_leader_worker_status_or_history(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, beat_env: dict[str, str]
) -> None:
    from tests.harness import read_executions

    env = schedule_env(hourly=every(3600))
    workers(env={"TEST_DEDUP": "1"}).wait_ready()
    beat = beats(env=env)
    _leading(beat, zk_client, zk_root)
    entries = EntryStore(zk_client, zk_root, make_app({**beat_env, **env}, set_as_current=False))
    entries.add("target", task=RECORD_TASK, every="1s", args=["target"], overlap="skip",
                pause_after_failures=2)  # fmt: skip
    log = Path(beat_env["TEST_EXECUTION_LOG"])
    executed = lambda: sum(e["name"] == "target" for e in read_executions(log))  # noqa: E731
    wait_for(lambda: executed() >= 2, 30, message="2 runs")
    incarnation = entries.history("target").incarnation
    folder = f"{layout.dedup_path(zk_root)}/{layout.dedup_folder('target', incarnation)}"
    hostile = {
        "d00000000000000000001": b"[" * 100_000,  # deep: past the JSON parser's recursion
        "r00000000000000000000": json.dumps({"host": ["x"], "pid": "1"}).encode(),
        "dxyz": b"\xff" * 1000,
        "d0000000000000000000x": b"{}",
        "huge": b"h" * 1_000_000,
    }
    for child, data in hostile.items():
        path = f"{folder}/{child}"
        if zk_client.exists(path):
            zk_client.set(path, data)
        else:
            zk_client.create(path, data)
    before = executed()
    wait_for(lambda: executed() >= before + 3, 30, message="3 more runs despite the garbage")
    for args in (("status",), ("status", "--json"), ("entry", "history", "target", "-n", "50"),
                 ("entry", "history", "target", "--json"), ("entry", "list")):  # fmt: skip
        done = _cli({**beat_env, **env}, *args)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stderr)
    assert not beat.log_matches(r"Traceback")
