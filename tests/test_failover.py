"""Real ``celery beat -S beatleader.Scheduler`` processes under faults; every message counted.

Each test runs its beats against the shared test ZooKeeper (session timeout 2 s, see conftest)
and kombu's filesystem broker, then asserts on what actually reached the broker: who sent each
message (celery's ``origin`` header), when (the transport's monotonic file name), and that the
task ids are exactly runs 1..N of the entry (so nothing was sent twice and no ordinal skipped).
"""

from __future__ import annotations

import itertools
import time

import pytest

from tests.cluster import (
    ENTRY,
    assert_exact_runs,
    assert_runs_at_least_once,
    every,
    first_sends,
    leader_process,
    now_ms,
    one_second_env,
    schedule_env,
    sender_pid,
    start_instances,
    wait_for_messages,
    wait_for_new_leader,
)
from tests.harness import FilesystemBroker, SentMessage, contenders, entry_state, wait_for

SESSION_TIMEOUT = 2.0  # conftest's BEATLEADER_SESSION_TIMEOUT


def _sessions(zk_server, sessions: list[int]) -> dict[int, int]:
    """session id -> the last request id (cxid) ZooKeeper saw from it; pings do not count."""
    lcxid = {c.get("sid"): c.get("lcxid") for c in zk_server.connections()}
    return {sid: lcxid[sid] for sid in sessions}


def test_three_instances_exactly_one_sends_and_followers_stay_idle(
    beats, zk_client, zk_root, zk_server, broker_dir
) -> None:
    broker = FilesystemBroker(broker_dir)
    processes = start_instances(beats, zk_client, zk_root, 3, one_second_env())
    wait_for_messages(broker, ENTRY, 2, timeout=20)
    queue = contenders(zk_client, zk_root)
    leader = leader_process(processes, zk_client, zk_root)
    followers = [c["session_id"] for c in queue[1:]]
    before = _sessions(zk_server, followers)
    sent_before = broker.count(ENTRY)

    wait_for(lambda: broker.count(ENTRY) >= sent_before + 3, 10, message="3 more sends")

    assert _sessions(zk_server, followers) == before, "a follower made ZooKeeper requests"
    messages = broker.for_entry(ENTRY)
    assert {sender_pid(m) for m in messages} == {leader.pid}
    assert_exact_runs(messages, zk_root, ENTRY)
    assert all(not p.sent() for p in processes if p is not leader)
    state = entry_state(zk_client, zk_root, ENTRY)
    assert state is not None and state["written_by"] == queue[0]["identity"]


def test_sigkill_of_the_leader_fails_over_within_the_session_timeout(
    sending_cluster, zk_client, zk_root
) -> None:
    broker, old = sending_cluster.broker, sending_cluster.leader

    killed_at = now_ms()
    old.kill()
    first, *_ = wait_for_messages(broker, ENTRY, 3, timeout=20, after_ms=killed_at)

    assert sender_pid(first) != old.pid
    latency = (first.sent_ms - killed_at) / 1000
    assert latency <= SESSION_TIMEOUT + 1, f"next send {latency:.2f} s after SIGKILL"
    after = [m for m in broker.for_entry(ENTRY) if m.sent_ms > killed_at]
    assert {sender_pid(m) for m in after} == {sender_pid(first)}
    # the killed leader's last run was not marked published yet: republished once at most
    assert_runs_at_least_once(broker.for_entry(ENTRY), zk_root, ENTRY, max_duplicates=1)


def test_a_leader_paused_past_its_session_sends_nothing_and_rejoins_as_follower(
    sending_cluster, zk_client, zk_root
) -> None:
    broker, old = sending_cluster.broker, sending_cluster.leader

    paused_at = now_ms()
    old.pause()
    wait_for_new_leader(zk_client, zk_root, old.pid, timeout=SESSION_TIMEOUT + 10)
    wait_for_messages(broker, ENTRY, 2, timeout=10, after_ms=paused_at)
    old.resume()
    resumed_at = now_ms()
    wait_for(
        lambda: old.pid in [c["pid"] for c in contenders(zk_client, zk_root)[1:]],
        15,
        message="the paused leader queues again as a follower",
    )
    wait_for_messages(broker, ENTRY, 3, timeout=10, after_ms=resumed_at)

    assert old.alive
    late = [m for m in broker.for_entry(ENTRY) if m.sent_ms > paused_at]
    assert old.pid not in {sender_pid(m) for m in late}
    assert_runs_at_least_once(broker.for_entry(ENTRY), zk_root, ENTRY, max_duplicates=1)
    assert old.log_matches(r"stopped leading")


@pytest.mark.parametrize("stop", ["terminate", "interrupt"])
def test_a_graceful_stop_hands_over_at_once_without_a_missed_run(
    sending_cluster, zk_client, zk_root, stop: str
) -> None:
    broker, old = sending_cluster.broker, sending_cluster.leader

    stopped_at = time.monotonic()
    getattr(old, stop)()
    wait_for_new_leader(zk_client, zk_root, old.pid, timeout=5)
    handover = time.monotonic() - stopped_at
    assert old.wait_exit(10) == 0
    wait_for_messages(broker, ENTRY, 3, timeout=10, after_ms=int(stopped_at * 1000))

    assert handover < 1.0, f"next leader after {handover:.2f} s"
    sent = [m.sent_ms for m in broker.for_entry(ENTRY)]
    gaps = [(b - a) / 1000 for a, b in itertools.pairwise(sent)]
    assert max(gaps) < 1.6, f"a run was missed across the handoff: gaps {gaps}"
    assert_exact_runs(broker.for_entry(ENTRY), zk_root, ENTRY)


def test_the_next_leader_continues_the_shared_schedule(
    beats, zk_client, zk_root, broker_dir
) -> None:
    entry = "every ten seconds"
    broker = FilesystemBroker(broker_dir)
    env = schedule_env(**{entry: every(10)})
    processes = start_instances(beats, zk_client, zk_root, 2, env)
    (first,) = wait_for_messages(broker, entry, 1, timeout=25)
    old = leader_process(processes, zk_client, zk_root)

    time.sleep(max(0.0, first.sent_ms / 1000 + 3 - time.monotonic()))  # the fault: 3 s after
    old.kill()
    (second,) = wait_for_messages(broker, entry, 1, timeout=20, after_ms=first.sent_ms)

    interval = (second.sent_ms - first.sent_ms) / 1000
    assert 9.5 <= interval <= 11.5, f"second run {interval:.2f} s after the first"
    assert sender_pid(second) != old.pid
    state = entry_state(zk_client, zk_root, entry)
    assert state is not None and state["total_run_count"] == 2
    assert_exact_runs([first, second], zk_root, entry)


@pytest.mark.parametrize("grace", [None, "1"])
def test_misfire_grace_skips_a_run_overdue_at_takeover(
    beats, zk_client, zk_root, broker_dir, grace: str | None
) -> None:
    entry = "every three seconds"
    broker = FilesystemBroker(broker_dir)
    env = {**schedule_env(**{entry: every(3)}), "BEATLEADER_SESSION_TIMEOUT": "5"}
    if grace is not None:
        env["BEATLEADER_MISFIRE_GRACE"] = grace
    processes = start_instances(beats, zk_client, zk_root, 2, env)
    (last,) = wait_for_messages(broker, entry, 1, timeout=20)
    old = leader_process(processes, zk_client, zk_root)
    old.kill()  # the run due 3 s later falls in the 5 s failover window
    wait_for(
        lambda: len(first_sends(broker.for_entry(entry))) >= 3, 25, message="2 runs after last"
    )
    takeover, following = first_sends(broker.for_entry(entry))[1:3]

    gap = (takeover.sent_ms - last.sent_ms) / 1000
    state = entry_state(zk_client, zk_root, entry)
    assert state is not None
    new = next(p for p in processes if p.pid == sender_pid(takeover))
    if grace is None:  # sent once on takeover, ~5 s after the last run
        assert 4.5 <= gap <= 7.5, gap
        assert state["skipped_count"] == 0
    else:  # skipped at takeover; the next run is 3 s after takeover
        assert gap >= 7.5, gap
        assert state["skipped_count"] == 1
        assert new.log_matches(r"skipping 'every three seconds'")
    assert 2.5 <= (following.sent_ms - takeover.sent_ms) / 1000 <= 3.6
    # the last run before the kill may be republished (grace None), or given up (grace 1 s)
    assert_runs_at_least_once(broker.for_entry(entry), zk_root, entry, max_duplicates=1)


def test_entry_names_with_spaces_slashes_and_non_ascii(
    beats, zk_client, zk_root, broker_dir
) -> None:
    entry = "nightly report/für Zoë ✓"
    broker = FilesystemBroker(broker_dir)
    start_instances(beats, zk_client, zk_root, 2, schedule_env(**{entry: every(1)}))
    wait_for_messages(broker, entry, 3, timeout=20)

    state = entry_state(zk_client, zk_root, entry)
    assert state is not None and state["total_run_count"] >= 3
    assert_exact_runs(broker.for_entry(entry), zk_root, entry)


def test_only_the_leader_writes_state_and_sends_backend_cleanup(
    beats, zk_client, zk_root, broker_dir, tmp_path
) -> None:
    cleanup = "celery.backend_cleanup"
    broker = FilesystemBroker(broker_dir)
    results = tmp_path / "results"
    results.mkdir()
    cleanup_every_second = every(1, task=cleanup, args=[])
    leader_env = {
        "TEST_RESULT_DIR": str(results),
        **schedule_env(**{cleanup: cleanup_every_second, ENTRY: every(1)}),
    }
    follower_env = {
        **leader_env,
        **schedule_env(**{cleanup: cleanup_every_second, "only on followers": every(1)}),
    }

    def cleanups() -> list[SentMessage]:
        return [m for m in broker.messages() if m.task == cleanup]

    (leader,) = start_instances(beats, zk_client, zk_root, 1, leader_env)
    wait_for(cleanups, 20, message="a first backend_cleanup")
    followers = [beats(env=follower_env) for _ in range(2)]
    wait_for(lambda: len(contenders(zk_client, zk_root)) == 3, 20, message="3 contenders")
    sent_before = len(cleanups())
    wait_for(lambda: len(cleanups()) >= sent_before + 3, 15, message="3 more cleanups")

    assert entry_state(zk_client, zk_root, "only on followers") is None
    for name in (cleanup, ENTRY):
        state = entry_state(zk_client, zk_root, name)
        assert state is not None and state["written_by"].endswith(f":{leader.pid}")
    assert {sender_pid(m) for m in cleanups()} == {leader.pid}
    assert_exact_runs(cleanups(), zk_root, cleanup)
    assert all(not f.sent() for f in followers)


def test_worker_dash_b_with_the_entry_point_alias_elects_one_sender(
    workers, zk_client, zk_root, broker_dir
) -> None:
    """``celery worker -B --scheduler beatleader``: beat runs in a forked child of each worker."""
    broker = FilesystemBroker(broker_dir)
    for _ in range(2):
        workers(env=one_second_env(), extra_args=["-B", "--scheduler", "beatleader"])
    wait_for(lambda: len(contenders(zk_client, zk_root)) == 2, 30, message="2 contenders")
    messages = wait_for_messages(broker, ENTRY, 3, timeout=20)

    assert {sender_pid(m) for m in messages} == {contenders(zk_client, zk_root)[0]["pid"]}
    assert_exact_runs(broker.for_entry(ENTRY), zk_root, ENTRY)
