"""Overlap policies with real ``celery beat`` and ``celery worker`` processes on ZooKeeper.

A 1 s entry whose task sleeps 2.5 s, under ``allow``, ``skip`` and ``buffer-one`` (set in the
static ``beat_schedule`` entry's ``options["beatleader"]``, and as a runtime entry's option);
the worker (threads, 4 at once, the guard installed) appends a start and an end line per run.
Asserted on what executed: the runs are ordinals 1..N each once, never two at once under
``skip``/``buffer-one``; a worker killed mid-run stops blocking within its session; a new
leader honours a run the old one started.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from beatleader.entries.api import EntryStore
from beatleader.runs.history import read_history
from beatleader.runs.records import Outcome
from beatleader.zk import layout
from tests.app import make_app
from tests.cluster import every, schedule_env
from tests.dedup_tasks import SLOW_TASK
from tests.harness import (
    FilesystemBroker,
    contenders,
    entry_state,
    read_executions,
    wait_for,
)

SECONDS = 2.5
THREADS = ["--pool=threads", "--concurrency=4"]


def _slow(policy: str | None) -> dict[str, Any]:
    options = {"beatleader": {"overlap": policy}} if policy else {}
    return every(1, task=SLOW_TASK, args=["slow", SECONDS], options=options)


class Runs:
    """Start and end times of each run of ``slow``, by ordinal, from the execution log."""

    def __init__(self, log: Path, root: str, client: KazooClient) -> None:
        self.log, self.root, self.client = log, root, client

    def ordinal_of(self) -> dict[str, int]:
        incarnation = (entry_state(self.client, self.root, "slow") or {}).get("incarnation")
        return {layout.run_task_id(self.root, "slow", n, incarnation): n for n in range(1, 200)}

    def spans(self) -> dict[int, list[float]]:
        known, spans = self.ordinal_of(), {}
        for line in read_executions(self.log):
            ordinal = known.get(line["id"])
            if ordinal is None:
                continue
            if line["name"] == "slow:start":
                assert ordinal not in spans, f"run {ordinal} started twice"
                spans[ordinal] = [line["ts"]]
            elif line["name"] == "slow":
                spans[ordinal].append(line["ts"])
        return spans

    def finished(self) -> int:
        return sum(len(span) == 2 for span in self.spans().values())


def _leads(beat: Any, client: KazooClient, root: str) -> None:
    wait_for(
        lambda: (queue := contenders(client, root)) and queue[0]["pid"] == beat.pid,
        30,
        message="the beat leads",
    )


def _most_at_once(spans: dict[int, list[float]]) -> int:
    events = sorted([(s[0], 1) for s in spans.values()] + [(s[1], -1) for s in spans.values()])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


@pytest.mark.parametrize("policy", ["allow", "skip", "buffer-one"])
def test_a_slow_entry_under_each_overlap_policy(
    beats: Any,
    workers: Any,
    zk_client: KazooClient,
    zk_root: str,
    execution_log: Path,
    broker_dir: Path,
    policy: str,
) -> None:
    workers(env={"TEST_DEDUP": "1"}, extra_args=THREADS).wait_ready()
    beat = beats(env=schedule_env(slow=_slow(None if policy == "allow" else policy)))
    _leads(beat, zk_client, zk_root)
    runs = Runs(execution_log, zk_root, zk_client)
    wait_for(lambda: runs.finished() >= 4, 60, message="4 finished runs")
    beat.terminate()
    beat.wait_exit(30)
    wait_for(lambda: all(len(s) == 2 for s in runs.spans().values()), 30, message="runs end")

    spans = runs.spans()
    assert sorted(spans) == list(range(1, len(spans) + 1)), spans  # 1..N, each once
    history = read_history(zk_client, zk_root, "slow", limit=100)
    skips = [r for r in history.records if r.outcome is Outcome.SKIPPED]
    assert all(r.reason == "overlap" for r in skips)
    if policy == "allow":
        assert _most_at_once(spans) >= 2  # the test can see an overlap
        assert not skips
    else:
        assert _most_at_once(spans) == 1, spans
        ordered = [spans[n] for n in sorted(spans)]
        gaps = [later[0] - earlier[1] for earlier, later in itertools.pairwise(ordered)]
        assert all(gap >= 0 for gap in gaps), gaps
        assert skips, "a blocked run is recorded as skipped"
        if policy == "buffer-one":  # the held run starts when the running one ends
            assert all(gap < 1.5 for gap in gaps), gaps
    succeeded = [r for r in history.records if r.outcome is Outcome.SUCCEEDED]
    assert len(succeeded) == len(spans)
    assert all(r.duration is not None and r.duration >= SECONDS for r in succeeded)
    for message in FilesystemBroker(broker_dir).messages():  # the policy is not published
        assert "beatleader" not in message.headers
    assert beat.log_matches(r"skipping the run of 'slow'") or policy == "allow"


def test_a_runtime_entry_with_skip_and_a_worker_killed_mid_run(
    beats: Any,
    workers: Any,
    zk_client: KazooClient,
    zk_root: str,
    execution_log: Path,
    beat_env: dict[str, str],
) -> None:
    """SIGKILL of the worker running run 1: its claim ends with its session (2 s); runs go on."""
    doomed = workers(env={"TEST_DEDUP": "1"}, extra_args=THREADS)
    doomed.wait_ready()
    env = schedule_env(hourly=every(3600))
    beat = beats(env=env)
    _leads(beat, zk_client, zk_root)
    entries = EntryStore(zk_client, zk_root, make_app({**beat_env, **env}, set_as_current=False))
    entries.add("slow", task=SLOW_TASK, every="1s", args=["slow", 30.0], overlap="skip")
    stored = entries.get("slow")
    assert stored is not None and stored[0].options == {"beatleader": {"overlap": "skip"}}
    runs = Runs(execution_log, zk_root, zk_client)
    wait_for(lambda: runs.spans(), 30, message="the first run started")

    def skips() -> int:
        records = read_history(zk_client, zk_root, "slow", limit=50).records
        return sum(r.outcome is Outcome.SKIPPED for r in records)

    wait_for(lambda: skips() >= 3, 30, message="3 due runs skipped while run 1 runs")
    assert list(runs.spans()) == [1]
    killed_at = time.time()
    doomed.kill()
    survivor = workers(env={"TEST_DEDUP": "1"}, extra_args=THREADS)
    survivor.wait_ready()
    wait_for(lambda: 2 in runs.spans(), 30, message="run 2 after the kill")
    assert runs.spans()[2][0] - killed_at < 2.0 + 5.0  # session timeout + a few ticks
    assert sorted(runs.spans()) == [1, 2]


def test_a_new_leader_honours_a_run_the_old_one_started(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, execution_log: Path
) -> None:
    workers(env={"TEST_DEDUP": "1"}, extra_args=THREADS).wait_ready()
    env = schedule_env(slow=every(1, task=SLOW_TASK, args=["slow", 8.0],
                                  options={"beatleader": {"overlap": "skip"}}))  # fmt: skip
    first = beats(env=env)
    _leads(first, zk_client, zk_root)
    second = beats(env=env)
    runs = Runs(execution_log, zk_root, zk_client)
    wait_for(lambda: runs.spans(), 30, message="the first run started")
    first.kill()
    _leads(second, zk_client, zk_root)
    second.wait_for_log(r"skipping the run of 'slow'", 30)  # the new leader sees run 1 running
    wait_for(lambda: len(runs.spans().get(1, [])) == 2, 30, message="run 1 ends")
    wait_for(lambda: 2 in runs.spans(), 30, message="run 2 after run 1")
    spans = runs.spans()
    assert sorted(spans) == [1, 2] or sorted(spans) == [1, 2, 3]
    assert spans[2][0] >= spans[1][1]  # never two at once across the failover


def test_a_bad_static_policy_is_reported_once_and_the_entry_runs_as_allow(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, execution_log: Path
) -> None:
    workers().wait_ready()
    typo = every(1, options={"beatleader": {"overlap": "skp"}})
    beat = beats(env=schedule_env(typo=typo, fine=every(1)))
    _leads(beat, zk_client, zk_root)
    executed = lambda name: [e for e in read_executions(execution_log) if e["name"] == name]  # noqa: E731
    wait_for(lambda: len(executed("typo")) >= 3 and len(executed("fine")) >= 3, 30)
    reported = beat.log_matches(r"entry 'typo': options.beatleader.overlap 'skp' is not one of")
    assert len(reported) == 1 and "running it as allow" in reported[0].string
