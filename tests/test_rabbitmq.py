"""End to end on a real RabbitMQ: a SIGKILLed leader and a restarted broker, executions counted.

One throwaway node (``tests.rabbitmq``) serves the module; every test has a queue of its own
(``TEST_QUEUE``), so no test sees another's messages. The beats run ``beatleader.Scheduler`` on
the shared test ZooKeeper (session timeout 2 s, see conftest), one worker runs with the guard
(``TEST_DEDUP``). Publication is at least once (an outbox run is published again, same task id,
after a crash or a failed publish); the guard makes execution exactly once: every run ordinal up
to the last committed one must have executed once, none twice, none missing.

The broker-restart test publishes with confirms (``TEST_CONFIRM_PUBLISH``). RabbitMQ resets its
connections when it stops, so a later publish raises and the run stays in the outbox even without
confirms (3 of 3 runs of this test passed so); but a publish written in the instant before the
reset would be lost silently ("a run whose publish succeeded into a broker that then loses the
message is not republished", beatleader.scheduler), and confirms close that race.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from beatleader.zk import layout
from tests.cluster import (
    ENTRY,
    leader_process,
    one_second_env,
    start_instances,
    wait_for_new_leader,
)
from tests.harness import BeatProcess, entry_state, read_executions, wait_for
from tests.rabbitmq import RabbitMQServer, skip_or_fail_without_rabbitmq

skip_or_fail_without_rabbitmq()

pytestmark = pytest.mark.slow

SESSION_TIMEOUT = 2.0  # conftest's BEATLEADER_SESSION_TIMEOUT
#: celery beat's log line of a send, with its local timestamp.
SEND_LINE = re.compile(
    r"^\[(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/\w+\] "
    r"Scheduler: Sending due task (?P<name>.*) \(\S+\)$",
    re.M,
)


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    """The module's RabbitMQ node; a test may restart it (it comes back on the same port)."""
    with RabbitMQServer(tmp_path_factory.mktemp("rabbitmq")) as server:
        yield server


@pytest.fixture
def rabbit_env(rabbitmq: RabbitMQServer) -> dict[str, str]:
    """Beats and workers on the module's RabbitMQ, a queue of this test's, the worker guard."""
    return {
        "TEST_BROKER_DIR": "",
        "TEST_BROKER_URL": rabbitmq.url,
        "TEST_QUEUE": f"bltest-{uuid.uuid4().hex}",
        "TEST_DEDUP": "1",
        **one_second_env(),
    }


def executions(log: Path) -> list[str]:
    """Task ids of the executions of ``ENTRY``, in order."""
    return [str(e["id"]) for e in read_executions(log) if e["name"] == ENTRY]


def first_send_at(process: BeatProcess) -> float:
    """Wall-clock time of ``process``'s first "Sending due task" log line of ``ENTRY``."""
    match = next(m for m in SEND_LINE.finditer(process.log()) if m["name"] == ENTRY)
    return datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def stop_and_count(
    processes: Sequence[BeatProcess], client: Any, root: str, log: Path
) -> tuple[int, Counter[int | str]]:
    """Stop the beats gracefully; (last committed ordinal, executions per ordinal).

    Waits until every committed run has executed or 15 s passed; an execution of a task id that
    is no run of ``ENTRY`` is counted under the id itself.
    """
    for process in processes:
        if process.alive:
            process.terminate()
            assert process.wait_exit(15) == 0, process.log_tail(40)
    state = entry_state(client, root, ENTRY)
    assert state is not None
    runs = int(state["total_run_count"])
    ordinal_of = {
        layout.run_task_id(root, ENTRY, n, state.get("incarnation")): n for n in range(1, runs + 1)
    }
    deadline = time.monotonic() + 15
    while len(set(executions(log)) & set(ordinal_of)) < runs and time.monotonic() < deadline:
        time.sleep(0.1)
    return runs, Counter(ordinal_of.get(task_id, task_id) for task_id in executions(log))


def test_each_run_executes_exactly_once_across_a_sigkill_failover(
    beats, workers, rabbit_env, zk_client, zk_root, execution_log
) -> None:
    workers(env=rabbit_env).wait_ready()
    processes = start_instances(beats, zk_client, zk_root, 3, rabbit_env)
    wait_for(lambda: len(executions(execution_log)) >= 3, 30, message="3 executions")
    old = leader_process(processes, zk_client, zk_root)

    killed_at = time.time()
    old.kill()
    new_pid = wait_for_new_leader(zk_client, zk_root, old.pid, SESSION_TIMEOUT + 10)["pid"]
    new = next(p for p in processes if p.pid == new_pid)
    before = len(executions(execution_log))
    wait_for(
        lambda: len(executions(execution_log)) >= before + 3,
        30,
        message="3 executions after the failover",
    )
    failover = first_send_at(new) - killed_at
    runs, counts = stop_and_count(processes, zk_client, zk_root, execution_log)

    assert runs >= 6
    assert counts == Counter(range(1, runs + 1)), f"executions per run ordinal (of {runs})"
    assert failover <= SESSION_TIMEOUT + 3, f"the new leader sent {failover:.2f} s after SIGKILL"


def test_runs_go_on_exactly_once_across_a_broker_restart(
    beats, workers, rabbitmq, rabbit_env, zk_client, zk_root, execution_log
) -> None:
    env = {**rabbit_env, "TEST_CONFIRM_PUBLISH": "1"}
    worker = workers(env=env)
    worker.wait_ready()
    processes = start_instances(beats, zk_client, zk_root, 2, env)
    wait_for(lambda: len(executions(execution_log)) >= 3, 30, message="3 executions")

    rabbitmq.restart()
    back = len(executions(execution_log))
    wait_for(
        lambda: len(executions(execution_log)) >= back + 3,
        30,
        message="3 executions after the broker restart",
    )
    leader = leader_process(processes, zk_client, zk_root)
    runs, counts = stop_and_count(processes, zk_client, zk_root, execution_log)

    assert runs >= 6
    assert counts == Counter(range(1, runs + 1)), f"executions per run ordinal (of {runs})"
    assert leader.log_matches(r"could not publish run \d+ of 'every second'"), (
        "the leader published nothing while the broker was down?"
    )
    assert worker.alive
