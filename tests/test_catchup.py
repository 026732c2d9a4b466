"""Catch-up modes with real ``celery beat`` and ``celery worker`` processes on ZooKeeper.

Four 1 s static entries, one per mode (its policy in ``options["beatleader"]``), run a few
times; the beat stops (gracefully) and stays down for 10 runs' time; a new beat takes over. One
downtime serves the four modes. Asserted on what the worker executed (each run's task id, so its
ordinal) and on the leader's records of each entry (each run's scheduled time):

* ``all``: every scheduled time of the downtime ran once, in order, each with its own ordinal
  and its scheduled time, none skipped;
* ``once``: the downtime's runs coalesced into exactly one run, none skipped;
* ``skip`` (window 4 s): the runs due more than 4 s before the takeover were skipped, each
  counted; those within the window coalesced into exactly one run.
* ``all`` with ``max_catchup`` 3: the oldest missed runs skipped, one ERROR saying how many,
  exactly the latest 3 sent.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient

from beatleader.zk import layout
from tests.cluster import every, schedule_env
from tests.harness import contenders, entry_state, read_executions, wait_for

DOWN = 10  # runs' time the beat is down
WINDOW = 4.0
POLICIES: dict[str, dict[str, Any]] = {
    "all": {"catchup": "all"},
    "once": {"catchup": "once"},
    "skip": {"catchup": "skip", "catchup_window": f"{WINDOW}s"},
    "capped": {"catchup": "all", "max_catchup": 3},
}


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _leads(beat: Any, client: KazooClient, root: str) -> None:
    wait_for(
        lambda: (queue := contenders(client, root)) and queue[0]["pid"] == beat.pid,
        30,
        message="the beat leads",
    )


def _state(client: KazooClient, root: str, name: str) -> dict[str, Any]:
    return entry_state(client, root, name) or {}


def _executed(log: Path, client: KazooClient, root: str, name: str) -> dict[int, int]:
    """Ordinal -> how many times the worker executed it."""
    incarnation = _state(client, root, name).get("incarnation")
    ids = {layout.run_task_id(root, name, n, incarnation): n for n in range(1, 500)}
    counts: dict[int, int] = {}
    for line in read_executions(log):
        if line["name"] == name and line["id"] in ids:
            counts[ids[line["id"]]] = counts.get(ids[line["id"]], 0) + 1
    return counts


def _down_and_back(
    beats: Any, workers: Any, client: KazooClient, root: str, log: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], Any]:
    """Run, stop for DOWN runs' time, run again; each entry's states before and after, and the
    second beat."""
    workers(extra_args=["--pool=threads", "--concurrency=4"]).wait_ready()
    entries = {name: every(1, options={"beatleader": p}) for name, p in POLICIES.items()}
    env = {**schedule_env(**entries), "BEATLEADER_HISTORY_SIZE": "200"}
    first = beats(env=env)
    _leads(first, client, root)

    def counts() -> list[int]:
        return [_state(client, root, name).get("total_run_count", 0) for name in POLICIES]

    wait_for(lambda: min(counts()) >= 2, 30, message="2 runs each")
    first.terminate()
    first.wait_exit(30)
    before = {name: _state(client, root, name) for name in POLICIES}
    assert all(state["published"] for state in before.values()), before
    last = max(_epoch(state["last_run_at"]) for state in before.values())
    wait_for(lambda: time.time() >= last + DOWN, DOWN + 5, message="the downtime")
    second = beats(env=env)
    _leads(second, client, root)
    back_at = time.time()
    wait_for(
        lambda: all(
            _epoch(_state(client, root, name)["last_run_at"]) >= back_at + 2 for name in POLICIES
        ),
        60,
        message="runs after the catch-up",
    )
    second.terminate()
    second.wait_exit(30)
    after = {name: _state(client, root, name) for name in POLICIES}
    for name, state in after.items():
        count = state["total_run_count"]
        wait_for(
            lambda n=name, c=count: len(_executed(log, client, root, n)) >= c,  # type: ignore[misc]
            30,
            message=f"all of {name} executed",
        )
    return before, after, second


def _after(before: dict[str, Any], after: dict[str, Any]) -> list[list[Any]]:
    """The leader's records [ordinal, at, status] written after ``before``."""
    known = len(before["recent"])
    return [list(r) for r in after["recent"][known:]]


def test_each_catchup_mode_after_a_downtime_of_ten_runs(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, execution_log: Path
) -> None:
    befores, afters, second = _down_and_back(beats, workers, zk_client, zk_root, execution_log)
    for name in POLICIES:
        executed = _executed(execution_log, zk_client, zk_root, name)
        total = afters[name]["total_run_count"]
        assert executed == dict.fromkeys(range(1, total + 1), 1), name  # each run once
    _check_all(befores["all"], afters["all"])
    _check_once(befores["once"], afters["once"])
    _check_skip(befores["skip"], afters["skip"])
    _check_capped(befores["capped"], afters["capped"], second)


def _check_all(before: dict[str, Any], after: dict[str, Any]) -> None:
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
    assert after["skipped_count"] == 0


def _check_once(before: dict[str, Any], after: dict[str, Any]) -> None:
    last, count = _epoch(before["last_run_at"]), before["total_run_count"]
    records = _after(before, after)
    assert all(status == "sent" for _, _, status in records), records
    assert records[0][0] == count + 1
    assert records[0][1] - last >= DOWN  # one run stands for the downtime's runs
    assert not [r for r in records if last < r[1] < last + DOWN]
    assert after["skipped_count"] == 0


def _check_skip(before: dict[str, Any], after: dict[str, Any]) -> None:
    last, count = _epoch(before["last_run_at"]), before["total_run_count"]
    records = _after(before, after)
    skips = [r for r in records if r[2] != "sent"]
    assert skips and records[: len(skips)] == skips, records  # the skips first, then runs
    assert all(r[0] is None and r[2] == "skipped:late" for r in skips), records
    skipped = after["skipped_count"]
    assert DOWN - WINDOW - 1 <= skipped <= DOWN + 5  # the takeover adds a few seconds
    assert round(skips[-1][1] - last, 3) == float(skipped)  # last + 1 .. last + skipped
    sent = records[len(skips)]
    assert sent[0] == count + 1
    # the runs within the window at the takeover (last + skipped + 1 ..) coalesced into one
    assert 0 <= sent[1] - (last + skipped + 1) <= WINDOW + 0.5
    assert all(r[2] == "sent" for r in records[len(skips) :]), records


def _check_capped(before: dict[str, Any], after: dict[str, Any], second: Any) -> None:
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
