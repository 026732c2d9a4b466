"""Jitter with real ``celery beat`` and ``celery worker`` processes, across a failover.

Six static 3 s entries with ``jitter: 2.5s``; two beats, the leader killed (SIGKILL) after a few
runs. For every run the worker executed, its start is ``jitter.offset(entry, ordinal)`` after
its scheduled time (the leader's record of it), to within the worker's pickup delay: under the
first leader and under the second, which computes the same offsets (a failover never
re-jitters a run). The offsets spread: the runs of one scheduled second start over the window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kazoo.client import KazooClient

from beatleader.schedules import jitter
from beatleader.zk import layout
from tests.cluster import every, schedule_env
from tests.harness import contenders, entry_state, read_executions, wait_for

JITTER = 2.5
NAMES = [f"j{n}" for n in range(6)]


def _leader_pid(client: KazooClient, root: str) -> int | None:
    queue = contenders(client, root)
    return queue[0]["pid"] if queue else None


def test_jittered_runs_start_at_their_offsets_under_both_leaders(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, execution_log: Path
) -> None:
    env = {
        **schedule_env(**{n: every(3, options={"beatleader": {"jitter": "2.5s"}}) for n in NAMES}),
        "BEATLEADER_HISTORY_SIZE": "100",
    }
    workers(extra_args=["--pool=threads", "--concurrency=6"]).wait_ready()
    first = beats(env=env)
    wait_for(lambda: _leader_pid(zk_client, zk_root) == first.pid, 30, message="first leads")
    second = beats(env=env)

    def runs() -> int:
        return sum((entry_state(zk_client, zk_root, n) or {}).get("total_run_count", 0)
                   for n in NAMES)  # fmt: skip

    wait_for(lambda: runs() >= 2 * len(NAMES), 40, message="2 runs each")
    first.kill()
    wait_for(lambda: _leader_pid(zk_client, zk_root) == second.pid, 30, message="second leads")
    after = runs()
    wait_for(lambda: runs() >= after + 2 * len(NAMES), 40, message="2 more runs each")
    second.terminate()
    second.wait_exit(30)

    lines = read_executions(execution_log)
    checked, late, offsets = 0, 0, set()
    for name in NAMES:
        state = entry_state(zk_client, zk_root, name) or {}
        scheduled = {r[0]: r[1] for r in state["recent"] if r[0] is not None}
        ids = {layout.run_task_id(zk_root, name, n, state["incarnation"]): n for n in scheduled}
        for line in lines:
            ordinal = ids.get(line["id"])
            if ordinal is None:
                continue
            expected = jitter.offset(name, ordinal, JITTER)
            started = line["ts"] - scheduled[ordinal]
            # the leader's takeover may make the one run in flight at the kill late, never early
            assert started >= expected - 0.05, (name, ordinal, started, expected)
            if started > expected + 1.0:
                late += 1  # due while no one led (the failover's session timeout)
            checked += 1
            offsets.add(round(expected, 1))
        ordinals = sorted(ids.values())
        assert ordinals == list(range(1, len(ordinals) + 1))
    # at most two runs per entry fall in the failover (kill + 2 s session timeout + takeover)
    assert checked - late >= 3 * len(NAMES) and late <= 2 * len(NAMES), (checked, late)
    assert max(offsets) - min(offsets) > JITTER / 3  # spread over the window


def test_a_jittered_entry_without_catchup_is_skipped_past_the_global_misfire_grace(
    zk_server: Any, zk_client: KazooClient, zk_root: str
) -> None:
    """``jitter`` alone does not opt an entry out of ``beatleader_misfire_grace``: its run, 60 s
    late after a takeover, is skipped (as any entry's is), not sent. In process, real ZooKeeper."""
    import json
    from datetime import datetime, timedelta, timezone

    from beatleader.config import Settings
    from beatleader.observe import Observers
    from tests.app import make_app
    from tests.test_outbox import Recorder, Recording, elected, run_until, write_state

    long_ago = (datetime.now(timezone.utc) - timedelta(seconds=60)).isoformat()
    for name in ("j", "plain"):
        state = layout.EntryState(long_ago, 4, None, "test", incarnation="00112233445566ff")
        write_state(zk_client, zk_root, name, state.encode())
    entries = {
        "j": every(30, options={"beatleader": {"jitter": "1s"}}),
        "plain": every(30),
    }
    app = make_app({"TEST_SCHEDULE": json.dumps(entries)}, set_as_current=False)
    settings = Settings.from_app(
        app, zk_hosts=zk_server.hosts, path=zk_root, session_timeout=2, misfire_grace=5
    )
    scheduler = Recording(
        app, beatleader_settings=settings, beatleader_observers=Observers(Recorder())
    )
    scheduler.published = []
    try:
        elected(scheduler)

        def skipped(name: str) -> int:
            return int((entry_state(zk_client, zk_root, name) or {}).get("skipped_count", 0))

        run_until(scheduler, lambda: skipped("j") and skipped("plain"), timeout=15)
        assert scheduler.published == []  # neither late run was sent
        for name in ("j", "plain"):
            assert (entry_state(zk_client, zk_root, name) or {})["total_run_count"] == 4
    finally:
        scheduler.close()
