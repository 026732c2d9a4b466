"""Many election contenders on one path: what a beat runs for the election, without the beat.

Each :class:`Contender` is a ``LeaderElection`` with the ``PeerWatch`` as its observer, on its
own ZooKeeper session, exactly the parts ``Leadership`` builds for a ``celery beat`` or an
``EmbeddedBeat``. :data:`CHILD` is the same as a script, for a contender in a child process that
a test or the benchmark can SIGKILL (it prints its session id, then waits on stdin).
:func:`session_requests` reads each session's request count from ZooKeeper's ``cons``
(``lcxid``, the last client xid: pings do not count). Tests and the benchmark only.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient

from beatleader.election.leader import LeaderElection
from beatleader.election.peers import PeerWatch
from beatleader.observe import Observer, Observers
from beatleader.zk.layout import ContenderInfo

#: argv: hosts, election path, name, session timeout (s).
CHILD = textwrap.dedent(
    """
    import sys
    from kazoo.client import KazooClient
    from beatleader.election.leader import LeaderElection
    from beatleader.election.peers import PeerWatch
    from beatleader.observe import Observer, Observers
    from beatleader.zk.layout import ContenderInfo
    hosts, path, name = sys.argv[1:4]
    info = ContenderInfo(name, "child", 1, "t", "2026-01-01T00:00:00+00:00", "fp", "app")
    client = KazooClient(hosts=hosts, timeout=float(sys.argv[4]))
    client.start(timeout=10)
    holder = []
    peers = PeerWatch(client, path, info, Observer(), lambda: holder[0].node)
    election = LeaderElection(client, path, info.encode(), observer=Observers(peers))
    holder.append(election)
    peers.start()
    election.start()
    print(hex(client.client_id[0]), flush=True)
    sys.stdin.read()
    """
)


@dataclass
class Contender:
    name: str
    client: KazooClient
    election: LeaderElection
    peers: PeerWatch

    @property
    def session(self) -> int:
        return int(self.client.client_id[0])

    def stop(self) -> None:
        self.election.stop()
        self.peers.stop()
        self.client.stop()
        self.client.close()


def contender(hosts: str, path: str, name: str, timeout: float) -> Contender:
    """A contender on ``path`` (an election folder), started, on a session of its own."""
    info = ContenderInfo(name, "here", 1, "t", "2026-01-01T00:00:00+00:00", "fp", "app")
    client = KazooClient(hosts=hosts, timeout=timeout)
    client.start(timeout=10)
    holder: list[LeaderElection] = []
    peers = PeerWatch(client, path, info, Observer(), lambda: holder[0].node)
    election = LeaderElection(client, path, info.encode(), observer=Observers(peers))
    holder.append(election)
    peers.start()
    election.start()
    return Contender(name, client, election, peers)


def session_requests(connections: list[dict[str, Any]]) -> dict[int, int]:
    """Session id -> its last request id, from ``ZooKeeperServer.connections()`` (``cons``)."""
    return {int(c["sid"]): int(c["lcxid"]) for c in connections if "sid" in c and "lcxid" in c}
