"""``dedup.install`` under faults, real processes: a worker killed mid-run, a leader killed.

Completions are counted exactly: the killed worker's run executes once more in total, and with
three beats (one SIGKILLed) plus duplicates published as the outbox does, every ordinal runs once.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kazoo.client import KazooClient

from tests.app import RECORD_TASK
from tests.cluster import every, leader_process, run_ids, schedule_env, start_instances
from tests.dedup_support import DROPPED, dedup_env, drops, executions_of, publish_run, publisher
from tests.dedup_tasks import SLOW_TASK
from tests.harness import ZooKeeperServer, entry_state, wait_for

__all__ = ["dedup_env", "publisher"]  # fixtures

pytestmark = pytest.mark.slow

SESSION_TIMEOUT = 2.0  # conftest's BEATLEADER_SESSION_TIMEOUT
VISIBILITY_TIMEOUT = 5.0  # Redis gives an unacknowledged message to another worker after this


@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_a_run_of_a_killed_worker_executes_once_after_redelivery(
    workers: Any,
    dedup_env: dict[str, str],
    publisher: Celery,
    zk_root: str,
    execution_log: Path,
    pool: str,
) -> None:
    pool_args = [f"--pool={pool}", "--concurrency=1"]
    env = {
        **dedup_env,
        "TEST_ACKS_LATE": "1",
        "TEST_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    }
    doomed = workers(env=env, extra_args=pool_args)
    doomed.wait_ready()
    task_id = publish_run(publisher, zk_root, "slow", 1, task=SLOW_TASK, args=["slow", 6.0])
    wait_for(lambda: executions_of(execution_log, "slow:start"), 30, message="slow run started")
    survivor = workers(env=env, extra_args=pool_args)
    survivor.wait_ready()
    doomed.kill_group()  # kill -9 while the task body runs: no completion, no ack
    doomed.wait_exit(10)
    # a republished copy (as the outbox sends) while the dead worker's session still holds the
    # claim: the survivor must wait for the claim to expire, not drop the run as running
    publish_run(publisher, zk_root, "slow", 1, task=SLOW_TASK, args=["slow", 6.0])
    wait_for(lambda: executions_of(execution_log, "slow"), 60, message="completion after kill")
    # the redelivered original (after the visibility timeout) is dropped; so is any copy Redis
    # restores of the survivor's own delivery while it runs (longer than the visibility timeout)
    dropped = DROPPED.format(id=task_id) + r".*: (?P<why>.*)$"
    survivor.wait_for_log(dropped, 60)
    assert executions_of(execution_log, "slow") == [task_id]
    assert executions_of(execution_log, "slow:start") == [task_id, task_id]
    assert {m["why"] for m in survivor.log_matches(dropped)} == {"already executed"}
    assert not doomed.log_matches(DROPPED.format(id=task_id))


def test_three_beats_a_killed_leader_and_republished_runs_execute_each_run_once(
    beats: Any,
    workers: Any,
    dedup_env: dict[str, str],
    publisher: Celery,
    zk_client: KazooClient,
    zk_root: str,
    execution_log: Path,
) -> None:
    entry = "every second"
    env = {**dedup_env, **schedule_env(**{entry: every(1)})}
    worker = workers(env=env, extra_args=["--pool=prefork", "--concurrency=2"])
    worker.wait_ready()
    processes = start_instances(beats, zk_client, zk_root, 3, env)
    republished: list[str] = []
    stop = threading.Event()

    def republish() -> None:
        """Publish the latest committed run again, as the outbox does after a failure."""
        while not stop.wait(0.7):
            state = entry_state(zk_client, zk_root, entry)
            if state and state["total_run_count"]:
                ordinal, incarnation = state["total_run_count"], state.get("incarnation")
                republished.append(
                    publish_run(publisher, zk_root, entry, ordinal, incarnation=incarnation)
                )

    def executions() -> list[str]:
        return executions_of(execution_log, entry)

    thread = threading.Thread(target=republish, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(executions()) >= 3, 30, message="3 executions")
        leader_process(processes, zk_client, zk_root).kill()
        before = len(executions())
        wait_for(lambda: len(executions()) >= before + 3, 30, message="3 executions after kill")
    finally:
        stop.set()
        thread.join(10)
    for process in processes:
        if process.alive:
            process.terminate()
            assert process.wait_exit(15) == 0
    state = entry_state(zk_client, zk_root, entry)
    assert state is not None
    runs = state["total_run_count"]
    # each republished copy, or its original, is dropped; the kill may have lost the beat's own
    # publish of one run (at most once without the outbox): then its copy executed instead
    expected_drops = len(republished) - 1
    wait_for(
        lambda: sum(drops(worker, i) for i in set(republished)) >= expected_drops,
        30,
        message=f"{expected_drops} duplicates dropped",
    )
    ids = executions()
    assert len(ids) == runs, f"{len(ids)} executions of {runs} runs"
    assert set(ids) == run_ids(zk_root, entry, runs, state.get("incarnation"))
    assert expected_drops >= 5


UNREACHABLE = r"task {id} \(entry '{entry}' run {run}\) not executed yet: claim store unreachable"


def test_a_run_waits_for_zookeeper_and_then_executes_once(
    workers: Any,
    dedup_env: dict[str, str],
    publisher: Celery,
    zk_root: str,
    private_zk_server: ZooKeeperServer,
    execution_log: Path,
) -> None:
    worker = workers(env={**dedup_env, "BEATLEADER_ZK_HOSTS": private_zk_server.hosts})
    worker.wait_ready()
    first = publish_run(publisher, zk_root, "patient", 1)
    # "succeeded" is logged after the guard recorded run 1 as done: no request in flight now
    worker.wait_for_log(rf"Task {RECORD_TASK}\[{first}\] succeeded", 30)
    private_zk_server.stop()
    second = publish_run(publisher, zk_root, "patient", 2)
    publish_run(publisher, zk_root, "patient", 2)  # and a duplicate of it
    pattern = UNREACHABLE.format(id=second, entry="patient", run=2)
    worker.wait_for_log(pattern, 30, count=4)  # both copies were requeued, twice each at least
    assert executions_of(execution_log, "patient") == [first]
    private_zk_server.start()
    worker.wait_for_log(DROPPED.format(id=second), 60)
    assert executions_of(execution_log, "patient") == [first, second]


def test_a_run_is_dropped_loudly_when_zookeeper_stays_unreachable(
    workers: Any,
    dedup_env: dict[str, str],
    publisher: Celery,
    zk_root: str,
    private_zk_server: ZooKeeperServer,
    execution_log: Path,
) -> None:
    private_zk_server.stop()
    env = {
        **dedup_env,
        "BEATLEADER_ZK_HOSTS": private_zk_server.hosts,
        "TEST_DEDUP_REQUEUE_LIMIT": "2",
    }
    worker = workers(env=env)
    worker.wait_ready()
    task_id = publish_run(publisher, zk_root, "abandoned", 1)
    worker.wait_for_log(
        rf"ERROR.*task {task_id} .* NOT executed after 2 requeues: claim store unreachable", 60
    )
    assert len(worker.log_matches(UNREACHABLE.format(id=task_id, entry="abandoned", run=1))) == 2
    assert executions_of(execution_log, "abandoned") == []
