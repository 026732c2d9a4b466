"""A throwaway ZooKeeper ensemble on loopback: ``size`` servers of ``localzk.py`` in one quorum.

For the deployment topology (``scripts/topology.py``) and the tests of server loss and quorum
loss. Same terms as ``localzk.py``: **not for production** (loopback only, no fsync, a 200 ms
tick).

Guarantees: every member has its own ports and data directory, kept across restarts;
:meth:`ZooKeeperEnsemble.start` returns once every member serves, that is once a quorum has formed.
Not guaranteed: which member leads (``leader()`` says which does now).
"""

from __future__ import annotations

from pathlib import Path

from beatleader.testing.localzk import ZooKeeperServer, free_port


class ZooKeeperEnsemble:
    """``size`` ZooKeeper servers on loopback forming one quorum (server ids 1..size)."""

    def __init__(self, base_dir: Path, size: int = 3) -> None:
        ports = {sid: (free_port(), free_port(), free_port()) for sid in range(1, size + 1)}
        self.servers = [
            ZooKeeperServer(Path(base_dir) / f"zk{sid}", client, server_id=sid, ensemble=ports)
            for sid, (client, _, _) in ports.items()
        ]

    @property
    def hosts(self) -> str:
        """The kazoo hosts string listing every member."""
        return ",".join(server.hosts for server in self.servers)

    def start(self, timeout: float = 60) -> None:
        """Launch every member, then wait until each serves (a quorum has formed)."""
        for server in self.servers:
            server.launch()
        for server in self.servers:
            server.wait_serving(timeout)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def leader(self) -> ZooKeeperServer | None:
        """The member currently in mode ``leader``."""
        return next((s for s in self.servers if s.mode() == "leader"), None)

    def followers(self) -> list[ZooKeeperServer]:
        """The members currently in mode ``follower``."""
        return [s for s in self.servers if s.mode() == "follower"]

    def serving(self) -> list[ZooKeeperServer]:
        """The members that serve requests now (none while the quorum is lost)."""
        return [s for s in self.servers if s.is_running and s.is_serving()]

    def diagnostics(self) -> list[tuple[str, str]]:
        """(title, text) sections for a failed test's report, one per member."""
        return [section for server in self.servers for section in server.diagnostics()]

    def __enter__(self) -> ZooKeeperEnsemble:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
