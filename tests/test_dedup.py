"""``dedup.install`` with real ``celery worker`` processes on Redis: duplicate runs are dropped.

The tests publish beatleader runs themselves, with the task id and headers the beat gives run N
(as the beat does again after a republish), and count what the workers executed.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kazoo.client import KazooClient

from beatleader.worker.claims import ClaimStore, RunKey
from beatleader.zk import layout
from tests.app import RECORD_TASK
from tests.cluster import run_ids
from tests.dedup_support import DROPPED, dedup_env, drops, executions_of, publish_run, publisher
from tests.dedup_tasks import FAIL_TASK, RETRY_TASK, SLOW_TASK
from tests.harness import read_executions, wait_for

__all__ = ["dedup_env", "publisher"]  # fixtures


@pytest.mark.parametrize("install", ["before-tasks", "after-tasks"])
def test_a_run_published_twice_executes_once(
    workers: Any,
    dedup_env: dict[str, str],
    publisher: Celery,
    zk_root: str,
    execution_log: Path,
    install: str,
) -> None:
    worker = workers(env={**dedup_env, "TEST_DEDUP": install})
    worker.wait_ready()
    task_id = publish_run(publisher, zk_root, "twice", 1)
    publish_run(publisher, zk_root, "twice", 1)
    match = worker.wait_for_log(DROPPED.format(id=task_id) + r".*: (?P<why>.*)$", 30)
    assert "entry 'twice' run 1" in match.group(0)
    assert match["why"] == "already executed"
    assert executions_of(execution_log, "twice") == [task_id]
    # the duplicate was acknowledged: nothing waits in the queue, nothing is unacked
    broker = redis.Redis.from_url(dedup_env["TEST_REDIS_URL"])
    wait_for(lambda: broker.llen("celery") == 0 and broker.hlen("unacked") == 0, 10)


def test_a_duplicate_delivered_while_the_run_executes_is_dropped(
    workers: Any, dedup_env: dict[str, str], publisher: Celery, zk_root: str, execution_log: Path
) -> None:
    first, second = workers(env=dedup_env), workers(env=dedup_env)
    first.wait_ready()
    second.wait_ready()
    # longer than the wait for a held claim (session timeout 2 s + 1 s): the holder is alive
    task_id = publish_run(publisher, zk_root, "long", 1, task=SLOW_TASK, args=["long", 5.0])
    wait_for(lambda: executions_of(execution_log, "long:start"), 30, message="run started")
    publish_run(publisher, zk_root, "long", 1, task=SLOW_TASK, args=["long", 5.0])
    dropped = DROPPED.format(id=task_id) + r".*: (?P<why>.*)$"
    match = wait_for(
        lambda: next((m for w in (first, second) for m in w.log_matches(dropped)), None), 30
    )
    assert match["why"] == "being executed by a live worker"
    assert executions_of(execution_log, "long:start") == [task_id]
    wait_for(lambda: executions_of(execution_log, "long"), 30, message="run completed")
    assert executions_of(execution_log, "long") == [task_id]


def test_a_new_incarnation_of_an_entry_is_not_dropped_as_its_old_life(
    workers: Any, dedup_env: dict[str, str], publisher: Celery, zk_root: str, execution_log: Path
) -> None:
    """State deleted and created again (prune + re-add, a deleted tree): ordinals restart at 1."""
    worker = workers(env=dedup_env)
    worker.wait_ready()
    old = [publish_run(publisher, zk_root, "reborn", n, incarnation="aaaa") for n in (1, 2)]
    wait_for(lambda: len(executions_of(execution_log, "reborn")) == 2, 30, message="old life")
    new = [publish_run(publisher, zk_root, "reborn", n, incarnation="bbbb") for n in (1, 2)]
    publish_run(publisher, zk_root, "reborn", 1, incarnation="aaaa")  # the old life's run 1 again
    wait_for(lambda: drops(worker, old[0]) == 1, 30, message="old run 1 dropped")
    wait_for(lambda: len(executions_of(execution_log, "reborn")) == 4, 30, message="new life")
    assert sorted(executions_of(execution_log, "reborn")) == sorted(old + new)
    assert len(set(old + new)) == 4  # the new life's ids are not the old life's


def test_two_workers_many_duplicates_each_run_once(
    workers: Any, dedup_env: dict[str, str], publisher: Celery, zk_root: str, execution_log: Path
) -> None:
    prefork = workers(env=dedup_env, extra_args=["--pool=prefork", "--concurrency=2"])
    threads = workers(env=dedup_env, extra_args=["--pool=threads", "--concurrency=2"])
    prefork.wait_ready()
    threads.wait_ready()
    runs, copies = 30, 4
    for _copy, ordinal in itertools.product(range(copies), range(1, runs + 1)):
        publish_run(publisher, zk_root, "many", ordinal)
    ids = run_ids(zk_root, "many", runs)

    def dropped() -> int:
        return sum(drops(w, i) for w in (prefork, threads) for i in ids)

    wait_for(lambda: dropped() >= runs * (copies - 1), 90, message="every duplicate dropped")
    executed = executions_of(execution_log, "many")
    assert sorted(executed) == sorted(ids), f"{len(executed)} executions of {runs} runs"
    assert dropped() == runs * (copies - 1)
    pids = {e["pid"] for e in read_executions(execution_log)}
    assert len(pids) >= 2, "the runs should have been spread over more than one process"


def test_tasks_that_are_not_beatleader_runs_are_not_guarded(
    workers: Any, dedup_env: dict[str, str], publisher: Celery, zk_root: str, execution_log: Path
) -> None:
    worker = workers(env=dedup_env)
    worker.wait_ready()
    plain_id = str(uuid.uuid4())
    for _ in range(2):
        publisher.send_task(RECORD_TASK, args=["plain"], task_id=plain_id)
    # beatleader's headers on a task id that is not that run's: not a beatleader run either
    forged_id = str(uuid.uuid4())
    for _ in range(2):
        publisher.send_task(
            RECORD_TASK,
            args=["forged"],
            task_id=forged_id,
            headers=layout.run_headers(zk_root, "forged", 1),
        )
    wait_for(lambda: len(executions_of(execution_log, "plain")) == 2, 30)
    wait_for(lambda: len(executions_of(execution_log, "forged")) == 2, 30)
    assert worker.log_matches(f"task {forged_id} carries beatleader headers that do not match")


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_a_retried_run_is_not_dropped_and_completes_once(
    workers: Any,
    dedup_env: dict[str, str],
    publisher: Celery,
    zk_root: str,
    execution_log: Path,
    pool: str,
) -> None:
    worker = workers(env=dedup_env, extra_args=[f"--pool={pool}", "--concurrency=2"])
    worker.wait_ready()
    task_id = publish_run(publisher, zk_root, "retried", 1, task=RETRY_TASK)
    wait_for(lambda: executions_of(execution_log, "retried"), 30, message="retried completion")
    assert executions_of(execution_log, "retried:attempt0") == [task_id]
    assert executions_of(execution_log, "retried:attempt1") == [task_id]
    # a late duplicate of the original delivery (retries = 0) is dropped
    publish_run(publisher, zk_root, "retried", 1, task=RETRY_TASK)
    worker.wait_for_log(DROPPED.format(id=task_id), 30)
    assert executions_of(execution_log, "retried") == [task_id]
    assert len(executions_of(execution_log, "retried:attempt0")) == 1


def test_a_failed_run_is_done(
    workers: Any, dedup_env: dict[str, str], publisher: Celery, zk_root: str, execution_log: Path
) -> None:
    worker = workers(env=dedup_env)
    worker.wait_ready()
    task_id = publish_run(publisher, zk_root, "failing", 1, task=FAIL_TASK)
    publish_run(publisher, zk_root, "failing", 1, task=FAIL_TASK)
    worker.wait_for_log(DROPPED.format(id=task_id), 30)
    assert executions_of(execution_log, "failing") == [task_id]
    assert worker.log_matches(r"RuntimeError: failing fails on purpose")


def test_claims_are_pruned_to_the_retention(
    workers: Any,
    dedup_env: dict[str, str],
    publisher: Celery,
    zk_root: str,
    zk_client: KazooClient,
    execution_log: Path,
) -> None:
    worker = workers(env={**dedup_env, "BEATLEADER_DEDUP_RETENTION": "1"})
    worker.wait_ready()
    entry, prune_every = "pruned", 32
    key = RunKey(layout.quote_entry_name(entry), 1, entry, "")
    store = ClaimStore(zk_client, zk_root, 1.0)
    executed: Callable[[], int] = lambda: len(executions_of(execution_log, entry))  # noqa: E731
    for round_ in range(1, 4):
        first, last = (round_ - 1) * prune_every + 1, round_ * prune_every
        for ordinal in range(first, last + 1):
            publish_run(publisher, zk_root, entry, ordinal)
        wait_for(lambda n=last: executed() == n, 60, message=f"{last} executions")
        markers = store.markers(key)
        # one retention (1 s) of markers at most: the previous rounds are gone
        assert markers and min(markers) >= first - prune_every, markers
        assert len(markers) <= 2 * prune_every
        marker = f"{store.folder_path(key)}/d{last:020d}"  # written just after the body's log
        ctime = wait_for(lambda m=marker: zk_client.exists(m), 10, message="the marker").ctime
        wait_for(lambda t=ctime: _server_ms(zk_client, zk_root) > t + 1100, 10)
    assert min(store.markers(key)) > prune_every
    # a duplicate older than the retention is not executed either
    stale_id = publish_run(publisher, zk_root, entry, 1)
    match = worker.wait_for_log(DROPPED.format(id=stale_id) + r".*: (?P<why>.*)$", 30)
    assert match["why"] == "older than the claim retention"
    assert executed() == 3 * prune_every


def _server_ms(client: KazooClient, root: str) -> int:
    """ZooKeeper's clock: the mtime of a probe write."""
    path = f"{root}/clock"
    client.ensure_path(path)
    return int(client.set(path, b"").mtime)
