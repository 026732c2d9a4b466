"""Helpers for tests that run several real ``celery beat -S beatleader.Scheduler`` processes."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient

from beatleader.zk import layout
from tests.harness import BeatProcess, FilesystemBroker, SentMessage, contenders, wait_for

#: The entry most tests schedule, and the environment giving it to ``tests.app``: one run a
#: second, with celery's 300 s ``beat_max_loop_interval`` so a slow takeover would show.
ENTRY = "every second"


def schedule_env(**entries: dict[str, Any]) -> dict[str, str]:
    """``TEST_SCHEDULE`` for ``tests.app``: entry name -> spec such as ``{"every": 1}``."""
    return {"TEST_SCHEDULE": json.dumps(entries)}


def every(seconds: float, **extra: Any) -> dict[str, Any]:
    return {"every": seconds, **extra}


def now_ms() -> int:
    """CLOCK_MONOTONIC in ms, the clock of ``SentMessage.sent_ms``."""
    return int(time.monotonic() * 1000)


def sender_pid(message: SentMessage) -> int:
    """The pid of the process that published ``message`` (celery's origin ``gen<pid>@host``)."""
    origin = str(message.headers["origin"])
    return int(origin.split("@", 1)[0].removeprefix("gen"))


def run_ids(root: str, entry: str, count: int, incarnation: str | None = None) -> set[str]:
    """The task ids of runs 1..count of ``entry`` (of one incarnation of its state)."""
    return {
        layout.run_task_id(root, entry, ordinal, incarnation) for ordinal in range(1, count + 1)
    }


def runs_by_incarnation(
    messages: Sequence[SentMessage], root: str, entry: str
) -> dict[str | None, list[int]]:
    """Incarnation -> ordinals sent, in order of first send; checks each id matches its headers."""
    runs: dict[str | None, list[int]] = {}
    for message in messages:
        ordinal = message.headers.get(layout.HEADER_RUN)
        incarnation = message.headers.get(layout.HEADER_INCARNATION)
        assert isinstance(ordinal, int), f"no run header: {message}"
        expected = layout.run_task_id(root, entry, ordinal, incarnation)
        assert message.task_id == expected, f"id {message.task_id} is not run {ordinal}'s"
        runs.setdefault(incarnation, []).append(ordinal)
    return runs


def assert_exact_runs(messages: Sequence[SentMessage], root: str, entry: str) -> None:
    """Every run of ``entry`` was sent exactly once, with no ordinal skipped."""
    ids = [m.task_id for m in messages]
    assert len(ids) == len(set(ids)), f"duplicate task ids: {ids}"
    runs = runs_by_incarnation(messages, root, entry)
    assert len(runs) <= 1, f"more than one incarnation: {runs}"
    for ordinals in runs.values():
        assert sorted(ordinals) == list(range(1, len(ordinals) + 1)), f"not 1..N: {ordinals}"


def assert_runs_at_least_once(
    messages: Sequence[SentMessage], root: str, entry: str, max_duplicates: int
) -> int:
    """Every run 1..N of ``entry`` was sent, none missing; returns how many sends repeated one.

    A crash or a lost session leaves the leader's last published run unmarked, and its successor
    publishes it again with the same task id (the outbox: at least once); ``max_duplicates``
    bounds that, typically one per such fault.
    """
    ids = [m.task_id for m in messages]
    distinct = set(ids)
    runs = runs_by_incarnation(messages, root, entry)
    for number, ordinals in enumerate(runs.values()):
        seen = sorted(set(ordinals))
        first = 1 if number == 0 else seen[0]  # a later incarnation may continue in memory
        assert seen == list(range(first, first + len(seen))), f"a run is missing: {runs}"
    duplicates = len(ids) - len(distinct)
    assert duplicates <= max_duplicates, f"{duplicates} repeated sends: {ids}"
    return duplicates


def first_sends(messages: Sequence[SentMessage]) -> list[SentMessage]:
    """``messages`` without the repeats of a task id already sent (republished runs)."""
    seen: set[str] = set()
    first = []
    for message in messages:
        if message.task_id not in seen:
            seen.add(message.task_id)
            first.append(message)
    return first


def start_instances(
    beats: Any, client: KazooClient, root: str, count: int, env: dict[str, str] | None = None
) -> list[BeatProcess]:
    """Start ``count`` beats and wait until all contend and one leads."""
    processes = [beats(env=env) for _ in range(count)]
    wait_for(lambda: len(contenders(client, root)) == count, 30, message=f"{count} contenders")
    return processes


def leader_process(processes: Sequence[BeatProcess], client: KazooClient, root: str) -> BeatProcess:
    """The process whose contender node is first in the queue."""
    queue = contenders(client, root)
    assert queue, "nobody contends"
    by_pid = {p.pid: p for p in processes}
    return by_pid[queue[0]["pid"]]


def wait_for_messages(
    broker: FilesystemBroker, entry: str, count: int, timeout: float, after_ms: int = 0
) -> list[SentMessage]:
    """Wait until ``entry`` has ``count`` messages sent after ``after_ms``; return those."""

    def enough() -> list[SentMessage] | None:
        found = [m for m in broker.for_entry(entry) if m.sent_ms > after_ms]
        return found if len(found) >= count else None

    result: list[SentMessage] = wait_for(
        enough, timeout, message=f"{count} messages of {entry!r} after {after_ms}"
    )
    return result


def wait_for_new_leader(
    client: KazooClient, root: str, old_pid: int, timeout: float
) -> dict[str, Any]:
    def other() -> dict[str, Any] | None:
        queue = contenders(client, root)
        return queue[0] if queue and queue[0]["pid"] != old_pid else None

    result: dict[str, Any] = wait_for(other, timeout, message=f"a leader other than {old_pid}")
    return result


def one_second_env() -> dict[str, str]:
    return {**schedule_env(**{ENTRY: every(1)}), "TEST_MAX_INTERVAL": "300"}


@dataclass(frozen=True)
class SendingCluster:
    """Beats that elected a leader which has already sent ``ENTRY`` twice."""

    broker: FilesystemBroker
    processes: list[BeatProcess]
    leader: BeatProcess


def start_sending_cluster(
    beats: Any, client: KazooClient, root: str, broker_dir: Path, count: int = 3
) -> SendingCluster:
    broker = FilesystemBroker(broker_dir)
    processes = start_instances(beats, client, root, count, one_second_env())
    wait_for_messages(broker, ENTRY, 2, timeout=20)
    return SendingCluster(broker, processes, leader_process(processes, client, root))
