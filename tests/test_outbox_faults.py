"""Fault injection against the outbox with real processes: no committed run is lost.

Real ``celery beat`` processes, the suite's ZooKeeper, a :class:`~beatleader.testing.proxy.ZkProxy`
between beat and ZooKeeper where a fault needs the network, a real ``redis-server`` for the broker
outage. Faults at the worst moments: the reply of a commit lost with the connection; the
connection cut between two batches of one tick; the broker stopped; SIGTERM during a publish;
SIGKILL and SIGSTOP between a commit and its publish (``tests.app.FaultScheduler`` pauses there);
a clock skewed by +-25 s and 45 s on the leader.

Without worker de-duplication the promise is "at least once": every test asserts that no run
ordinal 1..N is missing (N read from ZooKeeper after a graceful stop), and counts repeats
honestly (``assert_runs_at_least_once``'s bound, usually 0).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from beatleader.testing.localproc import LoggedProcess
from beatleader.testing.proxy import ZkProxy
from tests.cluster import (
    ENTRY,
    assert_runs_at_least_once,
    every,
    first_sends,
    now_ms,
    run_ids,
    schedule_env,
    sender_pid,
    wait_for_messages,
)
from tests.harness import FilesystemBroker, RedisServer, contenders, entry_state, wait_for

pytestmark = pytest.mark.slow

FAULTS = "tests.app.FaultScheduler"


@pytest.fixture
def proxy(zk_server: Any) -> Any:
    with ZkProxy(zk_server.hosts) as zk_proxy:
        yield zk_proxy


def one_second(**extra: str) -> dict[str, str]:
    return {**schedule_env(**{ENTRY: every(1)}), "TEST_MAX_INTERVAL": "1", **extra}


def assert_all_published(zk_client: Any, root: str, broker: FilesystemBroker, dups: int) -> int:
    """After a graceful stop: runs 1..N all sent (N from ZooKeeper), the last one marked."""
    state = entry_state(zk_client, root, ENTRY)
    assert state is not None and state["published"] is True, state
    found = assert_runs_at_least_once(broker.for_entry(ENTRY), root, ENTRY, max_duplicates=dups)
    assert {m.task_id for m in broker.for_entry(ENTRY)} == run_ids(
        root, ENTRY, state["total_run_count"], state.get("incarnation")
    )
    return found


def test_a_lost_commit_reply_is_published_after_the_reconnect(
    beats, proxy, zk_client, zk_root, broker_dir
) -> None:
    broker = FilesystemBroker(broker_dir)
    beat = beats(env=one_second(BEATLEADER_ZK_HOSTS=proxy.hosts))
    wait_for_messages(broker, ENTRY, 2, timeout=20)
    proxy.drop_next_multi_reply()
    wait_for(lambda: proxy.dropped_replies == 1, 10, message="a commit reply dropped")
    dropped_at = now_ms()
    wait_for_messages(broker, ENTRY, 3, timeout=20, after_ms=dropped_at)
    assert beat.stop() == 0

    assert beat.log_matches(r"connection failed during a commit")
    assert assert_all_published(zk_client, zk_root, broker, dups=0) == 0


def test_a_cut_between_two_batches_loses_neither(
    beats, proxy, zk_client, zk_root, broker_dir
) -> None:
    names = [f"e{i:03d}" for i in range(300)]  # 2 batches of at most 250 in one tick
    broker = FilesystemBroker(broker_dir)
    proxy.cut_before_multi(after=1)
    env = {**schedule_env(**{n: every(5) for n in names}), "BEATLEADER_ZK_HOSTS": proxy.hosts}
    beat = beats(env=env)
    wait_for(lambda: proxy.cuts >= 1, 30, message="the cut before the second batch")

    def all_sent_twice() -> bool:
        counts: dict[str | None, int] = {}
        for message in first_sends(broker.messages()):
            counts[message.entry] = counts.get(message.entry, 0) + 1
        return all(counts.get(n, 0) >= 2 for n in names)

    wait_for(all_sent_twice, 60, message="every entry sent twice")
    assert beat.stop() == 0

    assert beat.log_matches(r"connection failed during a commit")
    messages = broker.messages()
    duplicates = len(messages) - len({m.task_id for m in messages})
    for name in names:
        state = entry_state(zk_client, zk_root, name)
        assert state is not None and state["published"] is True
        sent = {m.task_id for m in messages if m.entry == name}
        count, incarnation = state["total_run_count"], state.get("incarnation")
        assert sent == run_ids(zk_root, name, count, incarnation), name
    assert duplicates == 0, f"{duplicates} runs sent twice"


class PersistentRedis(RedisServer):
    """``RedisServer`` with an fsync-always append-only file: a restart keeps the queue."""

    def start(self, timeout: float = 15) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)]
        self._proc = proc = LoggedProcess(args, self.log_path)
        wait_for(lambda: self.ping() or not proc.alive, timeout, message="redis answers PING")


def queued_ids(url: str) -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        return [json.loads(raw)["headers"]["id"] for raw in client.lrange("celery", 0, -1)]
    finally:
        client.close()


def test_a_broker_stopped_for_seconds_delays_runs_but_loses_none(
    beats, zk_client, zk_root, tmp_path: Path
) -> None:
    server = PersistentRedis(tmp_path / "redis")
    server.start()
    try:
        env = {
            **schedule_env(**{ENTRY: every(0.5)}),
            "TEST_MAX_INTERVAL": "1",
            "TEST_BROKER_DIR": "",
            "TEST_REDIS_URL": server.url,
        }
        beat = beats(env=env)
        wait_for(lambda: len(queued_ids(server.url)) >= 3, 20, message="3 runs queued")
        server.stop()
        beat.wait_for_log(r"could not publish run", timeout=20)
        time.sleep(3)  # the outage itself: the broker stays down for a few seconds
        server.start()
        restarted = len(queued_ids(server.url))
        wait_for(lambda: len(queued_ids(server.url)) >= restarted + 4, 30, message="4 more")
        assert beat.stop() == 0
        ids = queued_ids(server.url)
    finally:
        server.stop()

    state = entry_state(zk_client, zk_root, ENTRY)
    assert state is not None and state["published"] is True
    expected = run_ids(zk_root, ENTRY, state["total_run_count"], state.get("incarnation"))
    assert set(ids) == expected, "a run is missing"
    assert len(ids) - len(set(ids)) <= 1, f"{len(ids) - len(set(ids))} repeated sends"


def test_sigterm_during_a_slow_publish_publishes_and_marks_the_run(
    beats, zk_client, zk_root, broker_dir
) -> None:
    broker = FilesystemBroker(broker_dir)
    beat = beats(env=one_second(TEST_SLOW_PUBLISH="2"), scheduler=FAULTS)
    beat.wait_for_log(r"test: publishing slowly run 1 of", timeout=20)
    beat.terminate()  # lands in the 2 s publish: must wait for it, in every thread
    assert beat.wait_exit(20) == 0

    incarnation = (entry_state(zk_client, zk_root, ENTRY) or {}).get("incarnation")
    assert [m.task_id for m in broker.for_entry(ENTRY)] == sorted(
        run_ids(zk_root, ENTRY, 1, incarnation)
    )
    assert assert_all_published(zk_client, zk_root, broker, dups=0) == 0


def test_sigkill_between_commit_and_publish_the_successor_publishes_the_run(
    beats, zk_client, zk_root, broker_dir
) -> None:
    broker = FilesystemBroker(broker_dir)
    crashing = beats(env=one_second(TEST_PAUSE_BEFORE_PUBLISH="60"), scheduler=FAULTS)
    crashing.wait_for_log(r"test: pausing before publishing", timeout=20)
    successor = beats(env=one_second())
    wait_for(lambda: len(contenders(zk_client, zk_root)) == 2, 20, message="2 contenders")
    crashing.kill()
    wait_for_messages(broker, ENTRY, 3, timeout=20)
    assert successor.stop() == 0

    first = broker.for_entry(ENTRY)[0]
    incarnation = (entry_state(zk_client, zk_root, ENTRY) or {}).get("incarnation")
    assert first.task_id in run_ids(zk_root, ENTRY, 1, incarnation)
    assert sender_pid(first) == successor.pid
    assert assert_all_published(zk_client, zk_root, broker, dups=0) == 0


def test_a_leader_stopped_between_commit_and_publish_leaves_the_run_to_its_successor(
    beats, zk_client, zk_root, broker_dir
) -> None:
    broker = FilesystemBroker(broker_dir)
    env = one_second(BEATLEADER_SESSION_TIMEOUT="4")  # publish window 2 s
    paused = beats(env={**env, "TEST_PAUSE_BEFORE_PUBLISH": "1"}, scheduler=FAULTS)
    paused.wait_for_log(r"test: pausing before publishing", timeout=20)
    paused.pause()
    successor = beats(env=env)
    wait_for_messages(broker, ENTRY, 1, timeout=30)  # the successor publishes run 1
    paused.resume()
    # whichever notices first: the publish window (monotonic) or kazoo's session expiry
    paused.wait_for_log(r"past its publish window|stopped leading", timeout=20)
    wait_for_messages(broker, ENTRY, 4, timeout=20)
    assert paused.stop() == 0 and successor.stop() == 0

    assert {sender_pid(m) for m in broker.for_entry(ENTRY)} == {successor.pid}
    assert assert_all_published(zk_client, zk_root, broker, dups=0) == 0


@pytest.mark.parametrize("skew", [-25.0, 25.0, 45.0])
def test_a_skewed_clock_neither_doubles_nor_skips_a_run(
    beats, zk_client, zk_root, broker_dir, skew: float
) -> None:
    broker = FilesystemBroker(broker_dir)
    env = {**schedule_env(**{ENTRY: every(3)}), "TEST_MAX_INTERVAL": "1"}
    skewed = beats(env={**env, "TEST_CLOCK_SKEW": str(skew)}, scheduler=FAULTS)
    wait_for_messages(broker, ENTRY, 2, timeout=20)
    other = beats(env=env)
    wait_for(lambda: len(contenders(zk_client, zk_root)) == 2, 20, message="2 contenders")
    skewed.terminate()
    assert skewed.wait_exit(20) == 0
    handed_over = now_ms()
    wait_for_messages(broker, ENTRY, 3, timeout=30, after_ms=handed_over)
    assert other.stop() == 0

    sends = first_sends(broker.for_entry(ENTRY))
    gaps = [(b.sent_ms - a.sent_ms) / 1000 for a, b in itertools.pairwise(sends)]
    assert all(2.4 <= gap <= 4.5 for gap in gaps), f"gaps {gaps} (interval 3 s)"
    assert {sender_pid(m) for m in sends} == {skewed.pid, other.pid}
    reported = skewed.log_matches(r"off ZooKeeper's server time")
    assert bool(reported) == (abs(skew) > 30)
    assert assert_all_published(zk_client, zk_root, broker, dups=0) == 0
