"""Beat processes while their ZooKeeper is down, restarted, or never reachable; and bad settings.

Each test owns its ZooKeeper server (``private_zk_server``) so stopping it disturbs no other test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient

from beatleader.testing.proxy import ZkProxy
from tests.cluster import (
    ENTRY,
    assert_exact_runs,
    every,
    now_ms,
    schedule_env,
    sender_pid,
    start_instances,
    wait_for_messages,
)
from tests.harness import FilesystemBroker, connected_client, contenders, wait_for


def _env(server, session_timeout: float) -> dict[str, str]:
    return {
        **schedule_env(**{ENTRY: every(1)}),
        "BEATLEADER_ZK_HOSTS": server.hosts,
        "BEATLEADER_SESSION_TIMEOUT": str(session_timeout),
    }


@pytest.fixture
def private_client(private_zk_server) -> Iterator[KazooClient]:
    """A client of the private server; tests stop it before stopping the server."""
    with connected_client(private_zk_server.hosts, timeout=5) as client:
        yield client


def _bounce(server, client: KazooClient, outage: float = 0.0) -> int:
    """Stop ZooKeeper, keep it down ``outage`` seconds (the fault), start it; return when (ms)."""
    client.stop()
    server.stop()
    time.sleep(outage)
    server.start()
    restarted = now_ms()
    client.start(timeout=15)
    return restarted


def _assert_one_sender_after(broker: FilesystemBroker, moment_ms: int) -> None:
    after = [m for m in broker.for_entry(ENTRY) if m.sent_ms > moment_ms]
    assert len({sender_pid(m) for m in after}) == 1, "more than one instance sent"


def test_restart_within_the_session_timeout_keeps_one_leader_and_sends_no_duplicate(
    beats, private_zk_server, private_client, zk_root, broker_dir
) -> None:
    broker = FilesystemBroker(broker_dir)
    env = _env(private_zk_server, 8)
    processes = start_instances(beats, private_client, zk_root, 3, env)
    wait_for_messages(broker, ENTRY, 2, timeout=20)
    restarted = _bounce(private_zk_server, private_client)
    wait_for_messages(broker, ENTRY, 3, timeout=20, after_ms=restarted)

    assert all(p.alive for p in processes)
    _assert_one_sender_after(broker, restarted)
    assert_exact_runs(broker.for_entry(ENTRY), zk_root, ENTRY)


def test_outage_longer_than_the_session_every_instance_stays_and_one_leads_after(
    beats, private_zk_server, private_client, zk_root, broker_dir
) -> None:
    broker = FilesystemBroker(broker_dir)
    env = _env(private_zk_server, 2)
    processes = start_instances(beats, private_client, zk_root, 3, env)
    wait_for_messages(broker, ENTRY, 2, timeout=20)
    restarted = _bounce(private_zk_server, private_client, outage=5)  # 2.5 session timeouts
    wait_for_messages(broker, ENTRY, 3, timeout=30, after_ms=restarted)

    wait_for(lambda: len(contenders(private_client, zk_root)) == 3, 15, message="all contend again")
    assert all(p.alive for p in processes)
    _assert_one_sender_after(broker, restarted)
    assert_exact_runs(broker.for_entry(ENTRY), zk_root, ENTRY)
    assert all(p.log_matches(r"waiting for ZooKeeper") for p in processes)


def test_unreachable_zookeeper_at_start_is_waited_for_not_fatal(
    beats, private_zk_server, zk_root, broker_dir
) -> None:
    broker = FilesystemBroker(broker_dir)
    private_zk_server.stop()
    beat = beats(env=_env(private_zk_server, 2))
    beat.wait_for_log(r"waiting for ZooKeeper at 127\.0\.0\.1:\d+", timeout=20)
    assert beat.alive and broker.count() == 0

    private_zk_server.start()
    wait_for_messages(broker, ENTRY, 2, timeout=30)
    assert_exact_runs(broker.for_entry(ENTRY), zk_root, ENTRY)


def test_an_invalid_setting_stops_beat_with_one_line_before_sending(beats, broker_dir) -> None:
    beat = beats(env={"BEATLEADER_SESSION_TIMEOUT": "soon", **schedule_env(x=every(1))})
    assert beat.wait_exit(30) != 0
    log = beat.log()
    assert "Traceback" not in log
    expected = (
        "beatleader: beatleader_session_timeout (from BEATLEADER_SESSION_TIMEOUT) = 'soon' "
        "is invalid: expected a number of seconds from 0.2 to 3600"
    )
    assert log.count(expected) == 1
    assert FilesystemBroker(broker_dir).count() == 0


def test_a_restart_of_the_only_server_costs_no_session_and_no_reelection(
    beats, private_zk_server, private_client, zk_root, broker_dir
) -> None:
    """One server, one host in the hosts string. The reconnect after the restart meets the
    server's startup window, reproduced by a proxy that accepts the connection and never answers
    its handshake: a bounded handshake tries again, instead of waiting out the whole session
    (which expired it: a new contender node and a re-election each time)."""
    broker = FilesystemBroker(broker_dir)
    with ZkProxy(private_zk_server.hosts) as proxy:
        env = {**_env(private_zk_server, 6), "BEATLEADER_ZK_HOSTS": proxy.hosts}
        processes = start_instances(beats, private_client, zk_root, 2, env)
        wait_for_messages(broker, ENTRY, 2, timeout=20)
        before = [(c["node"], c["pid"]) for c in contenders(private_client, zk_root)]
        for _round in range(2):
            restarted = _bounce(private_zk_server, private_client)  # a real restart
            wait_for_messages(broker, ENTRY, 2, timeout=20, after_ms=restarted)
            proxy.swallow_handshakes(2)  # and one whose first handshakes get no answer
            cut = now_ms()
            proxy.cut()
            wait_for_messages(broker, ENTRY, 2, timeout=20, after_ms=cut)
        after = [(c["node"], c["pid"]) for c in contenders(private_client, zk_root)]
        assert after == before  # the same contender nodes: every session survived
        assert all(p.alive for p in processes)
        for process in processes:  # one contender node each: none queued again
            assert len(process.log_matches(r"beatleader: contending as ")) == 1
    assert_exact_runs(broker.for_entry(ENTRY), zk_root, ENTRY)
