"""End to end on Redis: 3 beats, a real worker, a SIGKILLed leader, executions counted exactly.

Publication is at least once (the successor republishes the killed leader's last, unmarked run
with the same task id); the worker guard (``beatleader.dedup.install``) makes execution exactly
once. Both halves together are what this test counts.
"""

from __future__ import annotations

import redis

from tests.cluster import (
    every,
    leader_process,
    run_ids,
    schedule_env,
    start_instances,
)
from tests.harness import entry_state, read_executions, wait_for

ENTRY = "every second"


def test_each_run_executes_exactly_once_across_a_crash_failover(
    beats, workers, redis_server, zk_client, zk_root, execution_log
) -> None:
    redis.Redis.from_url(redis_server.url).flushdb()
    env = {
        "TEST_BROKER_DIR": "",
        "TEST_REDIS_URL": redis_server.url,
        "TEST_DEDUP": "1",
        **schedule_env(**{ENTRY: every(1)}),
    }
    workers(env=env).wait_ready()
    processes = start_instances(beats, zk_client, zk_root, 3, env)

    def executions() -> list[dict[str, object]]:
        return [e for e in read_executions(execution_log) if e["name"] == ENTRY]

    wait_for(lambda: len(executions()) >= 3, 30, message="3 executions")
    old = leader_process(processes, zk_client, zk_root)
    old.kill()
    before = len(executions())
    wait_for(lambda: len(executions()) >= before + 3, 30, message="3 executions after failover")
    for process in processes:
        if process.alive:
            process.terminate()
            assert process.wait_exit(15) == 0
    state = entry_state(zk_client, zk_root, ENTRY)
    assert state is not None
    runs = state["total_run_count"]
    wait_for(lambda: len(executions()) >= runs, 30, message=f"{runs} executions")

    ids = [str(e["id"]) for e in executions()]
    assert len(ids) == runs, f"{len(ids)} executions of {runs} runs"
    assert set(ids) == run_ids(zk_root, ENTRY, runs, state.get("incarnation"))
