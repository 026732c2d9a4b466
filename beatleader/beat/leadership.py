"""One session's leadership: the ZooKeeper client, the election and its fence, the peer check.

:class:`Leadership` is the part of :class:`beatleader.Scheduler` that owns a ZooKeeper session
from :meth:`~Leadership.open` to :meth:`~Leadership.close`: the client (``zk/trust.py`` builds
and starts it: auth, TLS, one line for a configuration failure), the run-state store of the
session (``state.py``), the contender (``election/leader.py``) whose node is the **fence** every
commit checks, and the peer check (``election/peers.py``). The scheduler holds one at a time:
a second ``setup_schedule`` on an open scheduler keeps it, a ``close`` ends it, and the next
``setup_schedule`` opens a new one.

Guarantees: every thread it starts (kazoo's, the election's, the peer watch's) starts with
SIGTERM/SIGINT blocked (``sigmask.blocked_in_new_threads``), so celery's signal handler only runs
in the main thread, never between a commit and its publish; :meth:`~Leadership.close` ends the
session at once (the contender node vanishes, the next instance leads without waiting for the
session timeout) and joins the threads it started, at most ``timeout`` seconds each.

Not guaranteed: that :attr:`~Leadership.is_leader` is still true the moment after it was read
(a commit's fence check is what makes a stale leader harmless).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from kazoo.client import KazooClient

from beatleader.beat import sigmask
from beatleader.beat.state import CONNECTION_ERRORS, StateStore
from beatleader.config import Settings
from beatleader.election.leader import LeaderElection
from beatleader.election.peers import PeerWatch
from beatleader.observe import Observers
from beatleader.zk import layout
from beatleader.zk.layout import ContenderInfo
from beatleader.zk.trust import make_scheduler_client, start_scheduler_client

logger = logging.getLogger("beatleader.scheduler")


class Leadership:
    """The session, contender, fence and peer check of one scheduler; see the module doc."""

    def __init__(
        self,
        settings: Settings,
        observers: Observers,
        info: ContenderInfo,
        prepare: Callable[[KazooClient], None],
    ) -> None:
        """``prepare(client)`` runs before each new contender node (the schedule's description)."""
        self.settings = settings
        self.observers = observers
        self.info = info
        self._prepare = prepare
        self.client: KazooClient = make_scheduler_client(settings)  # SystemExit: bad TLS files
        self.store = StateStore(self.client, settings.path)
        client = self.client
        election_path = layout.election_path(settings.path)
        self.peers = PeerWatch(client, election_path, info, observers, lambda: self.election.node)
        self.election = LeaderElection(
            client,
            election_path,
            info.encode(),
            prepare=lambda: prepare(client),
            observer=Observers(observers, self.peers),  # leading, the peer check watches
        )

    def open(self) -> None:
        """Connect (SystemExit on bad credentials or TLS) and start contending."""
        with sigmask.blocked_in_new_threads():  # kazoo's, the election's, the peer watch's
            start_scheduler_client(self.client, self.settings)
            self.election.start()
            self.peers.start()
        logger.info(
            "beatleader: contending for %s as %s", self.settings.path, self.settings.identity
        )

    def close(self, timeout: float) -> None:
        """Stop contending and end the session now; join the threads started by :meth:`open`."""
        self.election.stop()
        self.peers.stop()
        with contextlib.suppress(*CONNECTION_ERRORS):
            self.client.stop()  # ends the session: the contender node vanishes, the next leads
        self.client.close()
        self.observers.connection_changed("CLOSED")  # the election's listener is gone by now
        self.election.join(timeout)
        self.peers.join(timeout)
        logger.info("beatleader: released leadership and closed the ZooKeeper session")

    @property
    def is_leader(self) -> bool:
        return self.election.is_leader

    @property
    def fence(self) -> str | None:
        """This session's contender node: every commit checks it still exists (None: gone)."""
        return self.election.node

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)
