"""The election recipe against a real ZooKeeper: one leader, handover, resign, re-contention."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient

from beatleader import layout
from beatleader.election import LeaderElection, sorted_contenders
from beatleader.layout import ContenderInfo
from tests.harness import wait_for


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
