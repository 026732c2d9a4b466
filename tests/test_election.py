"""The election recipe against a real ZooKeeper: one leader, handover, resign, re-contention."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient

from beatleader.election.leader import CONTENDER_MARKER, LeaderElection, sorted_contenders
from beatleader.observe import Observer
from beatleader.ops.status import resign_leader
from beatleader.zk import layout
from beatleader.zk.layout import ContenderInfo
from tests.harness import connected_client, wait_for


def _info(name: str) -> ContenderInfo:
    return ContenderInfo(name, "host", os.getpid(), "test", layout.utc_now_iso(), "f00")


@pytest.fixture
def elections(zk_server, zk_root) -> Iterator[list[tuple[KazooClient, LeaderElection]]]:
    """Three contenders, each with its own session, started in order."""
    made: list[tuple[KazooClient, LeaderElection]] = []
    for i in range(3):
        client = KazooClient(hosts=zk_server.hosts, timeout=2.0)
        client.start(timeout=10)
        election = LeaderElection(client, layout.election_path(zk_root), _info(f"c{i}").encode())
        election.start()
        wait_for(lambda e=election: e.node is not None, 10, message=f"c{i} has a node")
        made.append((client, election))
    yield made
    for client, election in made:
        election.stop()
        client.stop()
        client.close()


def _leaders(elections: list[tuple[KazooClient, LeaderElection]]) -> list[int]:
    return [i for i, (_, e) in enumerate(elections) if e.is_leader]


def test_first_contender_leads_alone(elections) -> None:
    wait_for(lambda: _leaders(elections) == [0], 10, message="only the first contender leads")
    assert elections[0][1].generation == 1
    assert [e.generation for _, e in elections[1:]] == [0, 0]


def test_closing_the_leader_session_hands_over_to_the_next(elections) -> None:
    wait_for(lambda: _leaders(elections) == [0], 10)
    client, election = elections[0]
    election.stop()
    client.stop()
    wait_for(lambda: _leaders(elections) == [1], 2, message="the second contender leads")


def test_deleting_the_leader_node_requeues_it_at_the_back(elections, zk_client, zk_root) -> None:
    wait_for(lambda: _leaders(elections) == [0], 10)
    old_node = elections[0][1].node
    zk_client.delete(old_node)
    wait_for(lambda: _leaders(elections) == [1], 2, message="the next contender leads")
    wait_for(lambda: elections[0][1].node not in (None, old_node), 5, message="a new node")
    queue = sorted_contenders(zk_client.get_children(layout.election_path(zk_root)))
    assert queue[-1] == os.path.basename(elections[0][1].node)
    assert not elections[0][1].is_leader


def test_followers_wait_on_a_predecessor_watch(elections) -> None:
    wait_for(lambda: _leaders(elections) == [0], 10)
    client, election = elections[1]
    assert not election.wait_for_leadership(timeout=0.2)
    assert client.connected


# --- hostile nodes and writes (issue 8) ------------------------------------------------------


class Problems(Observer):
    """Records ``problem`` reports."""

    def __init__(self) -> None:
        self.reported: list[tuple[str, str]] = []

    def problem(self, kind: str, detail: str) -> None:
        self.reported.append((kind, detail))


def _start(hosts: str, root: str, name: str, observer: Observer | None = None, timeout=2.0):
    client = KazooClient(hosts=hosts, timeout=timeout)
    client.start(timeout=10)
    election = LeaderElection(
        client, layout.election_path(root), _info(name).encode(), observer=observer
    )
    election.start()
    wait_for(lambda: election.node is not None, 10, message=f"{name} has a node")
    return client, election


def _fake_first(zk_client: KazooClient, root: str) -> str:
    """A persistent node named like a contender, sorting before every real one."""
    path = f"{layout.election_path(root)}/{'0' * 32}{CONTENDER_MARKER}{0:010d}"
    zk_client.create(path, b"", makepath=True)
    return path


def test_foreign_children_are_ignored_reported_and_never_lead(
    zk_server, zk_client, zk_root, caplog
) -> None:
    fake = _fake_first(zk_client, zk_root)
    base = layout.election_path(zk_root)
    zk_client.create(f"{base}/x{CONTENDER_MARKER}abc", b"")
    zk_client.create(f"{base}/garbage", b"\xff")
    problems = Problems()
    made = [_start(zk_server.hosts, zk_root, "c0", problems)]
    try:
        made.append(_start(zk_server.hosts, zk_root, "c1"))
        wait_for(lambda: _leaders(made) == [0], 10, message="the real first contender leads")
        details = [detail for _, detail in problems.reported]
        for name in (os.path.basename(fake), f"x{CONTENDER_MARKER}abc", "garbage"):
            assert sum(repr(name) in detail for detail in details) == 1, details
        assert len(details) == 3, details
        assert {kind for kind, _ in problems.reported} == {"foreign-contender"}
        # A queue change makes both re-read the queue; the foreign nodes are reported once.
        made[0][1].stop()
        made[0][0].stop()
        wait_for(lambda: made[1][1].is_leader, 5, message="the second leads past the fakes")
        assert len(problems.reported) == 3
        assert made[1][1].generation == 1
    finally:
        for client, election in made:
            election.stop()
            client.stop()
            client.close()


def test_rewritten_leader_data_requeues_it_and_the_next_leads(elections, zk_client) -> None:
    wait_for(lambda: _leaders(elections) == [0], 10)
    old_node = elections[0][1].node
    zk_client.set(old_node, b"rewritten by a stranger")
    wait_for(lambda: _leaders(elections) == [1], 2, message="the next contender leads")
    wait_for(lambda: elections[0][1].node not in (None, old_node), 5, message="a fresh node")
    assert zk_client.exists(old_node) is None
    own, stat = zk_client.get(elections[0][1].node)
    info = ContenderInfo.decode(own)
    assert stat.version == 0 and info is not None and info.identity == "c0"
    root = os.path.dirname(os.path.dirname(old_node))
    queue = sorted_contenders(zk_client.get_children(layout.election_path(root)))
    assert queue[-1] == os.path.basename(elections[0][1].node)


def test_garbage_in_a_followers_data_requeues_only_that_follower(elections, zk_client) -> None:
    wait_for(lambda: _leaders(elections) == [0], 10)
    follower_node = elections[1][1].node
    zk_client.set(follower_node, b"\x00\xff garbage")
    wait_for(lambda: elections[1][1].node not in (None, follower_node), 5, message="fresh node")
    assert _leaders(elections) == [0] and elections[0][1].generation == 1
    assert zk_client.exists(follower_node) is None


def test_repeated_step_downs_back_off(zk_server, zk_root) -> None:
    client, election = _start(zk_server.hosts, zk_root, "solo")
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if election.wait_for_leadership(timeout=0.05):
                election.step_down("test: the fence failed")
        # No hold: hundreds of generations in 3 s; with 0, 0.25, 0.5, 1, 2 s holds: about 5.
        assert 3 <= election.generation <= 8, election.generation
        assert not election.is_leader or election.generation >= 3
    finally:
        election.stop()
        client.stop()
        client.close()


def test_resign_after_a_reconnect_stops_the_old_leader_without_any_send(
    private_zk_server, zk_root
) -> None:
    hosts = private_zk_server.hosts
    states: list[str] = []
    # Each server named twice: a reconnect that lands in ZooKeeper's startup window (socket
    # accepted, never answered) waits session timeout / hosts, not the whole session.
    twice = f"{hosts},{hosts}"
    made = [_start(twice, zk_root, f"c{i}", timeout=15.0) for i in range(2)]
    made[0][0].add_listener(lambda state: states.append(str(state)))
    try:
        wait_for(lambda: _leaders(made) == [0], 10, message="the first contender leads")
        session = made[0][0].client_id
        private_zk_server.restart()  # the connection drops; the sessions live on
        wait_for(lambda: "CONNECTED" in states[states.index("SUSPENDED") :], 30, message="back")
        assert made[0][0].client_id == session, "the session must survive the restart"
        wait_for(lambda: _leaders(made) == [0], 10, message="leads again after the reconnect")
        wait_for(lambda: all(c.connected for c, _ in made), 30, message="both reconnected")
        with connected_client(hosts) as operator:
            resign_leader(operator, zk_root, timeout=5)
            wait_for(lambda: not made[0][1].is_leader, 1, message="old leader stops at once")
            wait_for(lambda: _leaders(made) == [1], 5, message="the next contender leads")
    finally:
        for client, election in made:
            election.stop()
            client.stop()
            client.close()
