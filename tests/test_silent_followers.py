"""Waiting instances are silent: 50 contenders on one path, each session's requests counted.

Each contender is what a beat runs for the election: a ``LeaderElection`` with the
``PeerWatch`` as its observer, on its own ZooKeeper session. The first one runs in a child
process (so that it can be SIGKILLed), the other 49 here. ZooKeeper's ``cons`` gives each
session's last request id (``lcxid``: pings do not count), read before and after each event:

* a leader killed (SIGKILL): only its successor makes requests; its session ends after the
  session timeout and the successor leads;
* a leader stopped gracefully: only the successor;
* a follower stopped gracefully: only its successor re-reads the queue;
* a rolling restart of all 50, one after the other: each follower's join costs it a few requests
  (6 measured: create, list, own node, the predecessor's watch, the peer check's list and the
  leader's node), not one per contender; the leader reads each new contender once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from beatleader.testing import crowd
from beatleader.testing.crowd import CHILD, Contender, session_requests
from beatleader.zk.layout import election_path
from tests.harness import ZooKeeperServer, connected_client, wait_for

COUNT = 50
TIMEOUT = 2.0

pytestmark = pytest.mark.slow


def contender(hosts: str, path: str, name: str) -> Contender:
    return crowd.contender(hosts, path, name, TIMEOUT)


class Requests:
    """Each session's ``lcxid`` from the server's ``cons``."""

    def __init__(self, server: ZooKeeperServer) -> None:
        self.server = server

    def now(self) -> dict[int, int]:
        return session_requests(self.server.connections())

    def settled(self, sessions: list[int], quiet: float = 1.0) -> dict[int, int]:
        """The counts once nobody of ``sessions`` made a request for ``quiet`` seconds."""

        def still() -> dict[int, int] | None:
            before = self.now()
            time.sleep(quiet)  # an observation window: the counts must not move in it
            after = self.now()
            same = all(before.get(s) == after.get(s) for s in sessions)
            return after if same else None

        found: dict[int, int] = wait_for(still, 60, message="the sessions settle")
        return found


@pytest.fixture
def queue(zk_server: ZooKeeperServer, zk_root: str) -> Iterator[dict[str, Any]]:
    path = election_path(zk_root)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, zk_server.hosts, path, "c00", str(TIMEOUT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    assert child.stdout is not None
    child_session = int(child.stdout.readline().strip(), 16)
    here: list[Contender] = []
    wait_for(lambda: len(_names(zk_server, path)) == 1, 30, message="the child contends")
    try:
        for number in range(1, COUNT):
            here.append(contender(zk_server.hosts, path, f"c{number:02d}"))
        wait_for(lambda: len(_names(zk_server, path)) == COUNT, 60, message="50 contenders")
        yield {"path": path, "child": child, "child_session": child_session, "here": here}
    finally:
        for c in here:
            c.stop()
        if child.poll() is None:
            child.kill()
        child.wait(10)


def _names(server: ZooKeeperServer, path: str) -> list[str]:
    with connected_client(server.hosts) as client:
        return client.get_children(path) if client.exists(path) else []


def _leader(here: list[Contender]) -> Contender | None:
    return next((c for c in here if c.election.is_leader), None)


def _moved(before: dict[int, int], after: dict[int, int], sessions: list[int]) -> dict[int, int]:
    return {
        s: after.get(s, 0) - before.get(s, 0) for s in sessions if after.get(s) != before.get(s)
    }


def test_only_the_successor_makes_requests_when_the_leader_changes(
    zk_server: ZooKeeperServer, queue: dict[str, Any]
) -> None:
    here: list[Contender] = queue["here"]
    requests = Requests(zk_server)
    sessions = [c.session for c in here]

    # a leader killed: its session ends after the timeout; only the next in line asks
    before = requests.settled(sessions)
    queue["child"].send_signal(signal.SIGKILL)
    wait_for(lambda: _leader(here), 30, message="a successor leads")
    successor = _leader(here)
    assert successor is not None and successor.name == "c01"
    after = requests.settled(sessions)
    moved = _moved(before, after, sessions)
    assert set(moved) <= {successor.session}, moved

    # the leader stopped gracefully: the next one leads, alone in asking (and the leader's
    # peer check moves to it: it reads the queue and watches it)
    before = after
    successor.stop()
    here.remove(successor)
    wait_for(lambda: _leader(here), 30, message="the next successor leads")
    second = _leader(here)
    assert second is not None and second.name == "c02"
    after = requests.settled([c.session for c in here])
    moved = _moved(before, after, [c.session for c in here])
    assert set(moved) <= {second.session}, moved

    # a follower stopped: its successor watches the next one up; the leader sees the queue
    # change (its peer check); nobody else asks
    before = after
    middle = here[len(here) // 2]
    behind = here[here.index(middle) + 1]
    middle.stop()
    here.remove(middle)
    after = requests.settled([c.session for c in here])
    moved = _moved(before, after, [c.session for c in here])
    assert set(moved) <= {behind.session, second.session}, moved


def test_a_rolling_restart_of_all_50_costs_each_follower_o1_requests(
    zk_server: ZooKeeperServer, queue: dict[str, Any]
) -> None:
    here: list[Contender] = queue["here"]
    path = queue["path"]
    requests = Requests(zk_server)
    queue["child"].send_signal(signal.SIGTERM)  # the child leaves (its session expires)
    wait_for(lambda: _leader(here), 30, message="a leader here")
    kept = list(here)
    before = requests.settled([c.session for c in kept])
    fresh: list[Contender] = []
    for old in kept:  # each one restarts: leaves, and joins again at the back
        old.stop()
        here.remove(old)
        new = contender(zk_server.hosts, path, old.name + "-new")
        here.append(new)
        fresh.append(new)
    wait_for(lambda: len(_names(zk_server, path)) == len(kept), 60, message="all back")
    wait_for(lambda: _leader(here), 30, message="a leader after the restart")
    after = requests.settled([c.session for c in fresh])
    # every restarted session: its own join (create, list, a watch, the peer check) and, when
    # its predecessor restarts after it, a re-read; the leader: its peer check per change
    per_session = {c.name: after.get(c.session, 0) for c in fresh}
    leader = _leader(here)
    assert leader is not None
    followers = [n for n in per_session if n != leader.name]
    assert max(per_session[n] for n in followers) <= 8, per_session  # 6 measured
    assert per_session[leader.name] <= 2 * len(fresh) + 10, per_session  # its peer check
    assert before  # the counts were read
