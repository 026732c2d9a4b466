"""Catch-up modes with real ``celery beat`` and ``celery worker`` processes on ZooKeeper.

A 1 s static entry (its policy in ``options["beatleader"]``) runs a few times; the beat stops
(gracefully) and stays down for 10 runs' time; a new beat takes over. Asserted on what the
worker executed (each run's task id, so its ordinal) and on the leader's records of the entry
(each run's scheduled time):

* ``all``: every scheduled time of the downtime ran once, in order, each with its own ordinal
  and its scheduled time, none skipped;
* ``once``: the downtime's runs coalesced into exactly one run, none skipped;
* ``skip`` (window 2.5 s): the runs due more than 2.5 s before the takeover were skipped, each
  counted; those within the window coalesced into exactly one run.
* ``all`` with ``max_catchup`` 3: the oldest missed runs skipped, one ERROR saying how many,
  exactly the latest 3 sent.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from beatleader.zk import layout
from tests.cluster import every, schedule_env
from tests.harness import contenders, entry_state, read_executions, wait_for

DOWN = 10  # runs' time the beat is down
WINDOW = 2.5


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _leads(beat: Any, client: KazooClient, root: str) -> None:
    wait_for(
        lambda: (queue := contenders(client, root)) and queue[0]["pid"] == beat.pid,
        30,
        message="the beat leads",
    )


def _state(client: KazooClient, root: str) -> dict[str, Any]:
    return entry_state(client, root, "tick") or {}


def _executed(log: Path, client: KazooClient, root: str) -> dict[int, int]:
    """Ordinal -> how many times the worker executed it."""
    incarnation = _state(client, root).get("incarnation")
    ids = {layout.run_task_id(root, "tick", n, incarnation): n for n in range(1, 500)}
    counts: dict[int, int] = {}
    for line in read_executions(log):
        if line["name"] == "tick" and line["id"] in ids:
            counts[ids[line["id"]]] = counts.get(ids[line["id"]], 0) + 1
    return counts


def _down_and_back(
    beats: Any, workers: Any, client: KazooClient, root: str, log: Path, policy: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Run, stop for DOWN runs' time, run again; the states before and after, the 2nd beat."""
    workers().wait_ready()
    env = {
        **schedule_env(tick=every(1, options={"beatleader": policy})),
        "BEATLEADER_HISTORY_SIZE": "200",
    }
    first = beats(env=env)
    _leads(first, client, root)
    wait_for(lambda: _state(client, root).get("total_run_count", 0) >= 2, 30, message="2 runs")
    first.terminate()
    first.wait_exit(30)
    before = _state(client, root)
    assert before["published"], before
    last = _epoch(before["last_run_at"])
    wait_for(lambda: time.time() >= last + DOWN, DOWN + 5, message="the downtime")
    second = beats(env=env)
    _leads(second, client, root)
    back_at = time.time()
    wait_for(
        lambda: _epoch(_state(client, root)["last_run_at"]) >= back_at + 2,
        60,
        message="runs after the catch-up",
    )
    second.terminate()
    second.wait_exit(30)
    count = _state(client, root)["total_run_count"]
    wait_for(lambda: len(_executed(log, client, root)) >= count, 30, message="all executed")
    return before, _state(client, root), second


def _after(before: dict[str, Any], after: dict[str, Any]) -> list[list[Any]]:
    """The leader's records [ordinal, at, status] written after ``before``."""
    known = len(before["recent"])
    return [list(r) for r in after["recent"][known:]]


def test_catchup_all_runs_every_missed_run_once(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, execution_log: Path
) -> None:
    before, after, _ = _down_and_back(
        beats, workers, zk_client, zk_root, execution_log, {"catchup": "all"}
    )
    last, count = _epoch(before["last_run_at"]), before["total_run_count"]
    records = _after(before, after)
    assert all(status == "sent" for _, _, status in records), records
    ordinals = [r[0] for r in records]
    assert ordinals == list(range(count + 1, count + 1 + len(records)))
    # each run has its scheduled time: the downtime's runs are last + 1, last + 2, ... exactly
    assert [round(r[1] - last, 3) for r in records] == [
        float(k) for k in range(1, len(records) + 1)
    ]
    missed = sum(round(r[1] - last, 3) <= DOWN for r in records)  # the records keep ms
    assert missed == DOWN
    executed = _executed(execution_log, zk_client, zk_root)
    assert executed == dict.fromkeys(range(1, after["total_run_count"] + 1), 1)
    assert after["skipped_count"] == 0


def test_catchup_once_coalesces_the_missed_runs(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, execution_log: Path
) -> None:
    before, after, _ = _down_and_back(
        beats, workers, zk_client, zk_root, execution_log, {"catchup": "once"}
    )
    last, count = _epoch(before["last_run_at"]), before["total_run_count"]
    records = _after(before, after)
    assert all(status == "sent" for _, _, status in records), records
    assert records[0][0] == count + 1
    assert records[0][1] - last >= DOWN  # one run stands for the downtime's runs
    assert not [r for r in records if last < r[1] < last + DOWN]
    executed = _executed(execution_log, zk_client, zk_root)
    assert executed == dict.fromkeys(range(1, after["total_run_count"] + 1), 1)
    assert after["skipped_count"] == 0


def test_catchup_skip_skips_the_runs_older_than_the_window(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, execution_log: Path
) -> None:
    before, after, _ = _down_and_back(
        beats,
        workers,
        zk_client,
        zk_root,
        execution_log,
        {"catchup": "skip", "catchup_window": f"{WINDOW}s"},
    )
    last, count = _epoch(before["last_run_at"]), before["total_run_count"]
    records = _after(before, after)
    skip, sent = records[0], records[1]
    assert skip[0] is None and skip[2] == "skipped:late", records
    skipped = after["skipped_count"]
    assert skipped >= DOWN - WINDOW
    assert round(skip[1] - last, 3) == float(skipped)  # last + 1 .. last + skipped: each counted
    assert sent[0] == count + 1 and sent[2] == "sent"
    # the runs within the window at the takeover (last + skipped + 1 ..) coalesced into one
    assert 0 <= sent[1] - (last + skipped + 1) <= WINDOW + 0.5
    assert all(r[2] == "sent" for r in records[1:]), records
    executed = _executed(execution_log, zk_client, zk_root)
    assert executed == dict.fromkeys(range(1, after["total_run_count"] + 1), 1)


@pytest.mark.slow
def test_catchup_all_past_max_catchup_skips_the_oldest(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, execution_log: Path
) -> None:
    before, after, second = _down_and_back(
        beats, workers, zk_client, zk_root, execution_log, {"catchup": "all", "max_catchup": 3}
    )
    last, count = _epoch(before["last_run_at"]), before["total_run_count"]
    records = _after(before, after)
    skip = records[0]
    assert skip[0] is None and skip[2] == "skipped:late", records
    skipped = after["skipped_count"]
    assert round(skip[1] - last, 3) == float(skipped) and skipped >= DOWN - 3
    burst = records[1:4]  # exactly the latest 3 missed runs, each with its scheduled time
    assert [r[0] for r in burst] == [count + 1, count + 2, count + 3]
    assert [round(r[1] - last, 3) for r in burst] == [float(skipped + k) for k in (1, 2, 3)]
    errors = second.log_matches(r"more than max_catchup 3: skipping the oldest (?P<n>\d+)")
    assert len(errors) == 1 and int(errors[0]["n"]) == skipped
    executed = _executed(execution_log, zk_client, zk_root)
    assert executed == dict.fromkeys(range(1, after["total_run_count"] + 1), 1)
