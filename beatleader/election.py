"""Leader election among beat instances over ZooKeeper ephemeral sequential znodes.

Each instance owns one contender node ``<path>/<uuid>__contender__<seq>``; the lowest
sequence leads. A contender watches only its predecessor (no herd effect) and its own node, so a
waiting instance costs ZooKeeper nothing until the queue in front of it changes.

Guarantees:

* :attr:`LeaderElection.is_leader` is true only between "own node is first, confirmed over a live
  connection" and the first sign that this may no longer hold: SUSPENDED (connection lost; the
  session may still live), LOST (session expired; the node is gone), or the own node deleted from
  outside (``beatleader resign``). Connection listeners and watches only flip flags and wake the
  worker thread; every ZooKeeper call happens in that thread.
* After SUSPENDED -> CONNECTED with the same session the own node is confirmed again before leading
  resumes. After LOST, or after the own node was deleted, a new node is created at the back of the
  queue. The election never gives up and never exits the process.
* Each acquisition of leadership increments :attr:`LeaderElection.generation`, so the scheduler can
  tell that it must reload shared state before sending.

Not guaranteed: that no other instance believes it leads at the same moment (a paused process
cannot know it was paused). That is what the fence in ``state.py`` is for: every send is preceded by
a transaction that checks the own node still exists.

Node creation is protected as in Curator: the uuid in the name lets a create whose reply was lost
find its node again instead of leaving an orphan that would lead with nobody behind it.
"""

from __future__ import annotations

import logging
import posixpath
import threading
import time
import uuid
from collections.abc import Callable

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import WatchedEvent

from beatleader.observe import Observer, Observers

logger = logging.getLogger(__name__)

#: Separates the protection token from ZooKeeper's sequence in a contender node's name.
CONTENDER_MARKER = "__contender__"


def contender_sequence(node_name: str) -> int:
    """The sequence number ZooKeeper gave a contender node (its queue position)."""
    return int(node_name.rsplit(CONTENDER_MARKER, 1)[1])


def sorted_contenders(children: list[str]) -> list[str]:
    """Contender node names in queue order: the first one leads."""
    return sorted((c for c in children if CONTENDER_MARKER in c), key=contender_sequence)


class LeaderElection:
    """One contender in the election under ``path``; see the module docstring.

    ``identifier`` is the data of the contender node (what operators see); ``prepare`` is called
    in the election thread, connected, before each new contender node is created.
    """

    #: First and longest pause between "still waiting for ZooKeeper" log lines, seconds.
    waiting_log_first = 2.0
    waiting_log_max = 60.0
    #: Pause after a failed ZooKeeper call before the worker tries again, seconds.
    retry_delay = 0.5

    def __init__(
        self,
        client: KazooClient,
        path: str,
        identifier: bytes,
        *,
        prepare: Callable[[], None] | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._client = client
        self._election_path = path
        self._identifier = identifier
        self._prepare = prepare
        self._observer = observer or Observers()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._cond = threading.Condition()
        self._leading = False
        self._generation = 0
        self._leader_since: float | None = None
        # Worker-thread state, plus flags the listener and watches raise for it.
        self._node: str | None = None
        self._pending_prefix: str | None = None
        self._session_expired = False
        self._own_node_deleted = False
        self._watched: str | None = None  # the predecessor last logged as watched
        self._thread: threading.Thread | None = None

    # -- public API ---------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def generation(self) -> int:
        """How many times this instance has become leader."""
        return self._generation

    @property
    def node(self) -> str | None:
        """Full path of the own contender node, when there is one."""
        return self._node

    @property
    def leader_since(self) -> float | None:
        """``time.time()`` when the current leadership began, or None when not leading."""
        return self._leader_since

    def start(self) -> None:
        self._client.add_listener(self._on_connection_state)
        self._thread = threading.Thread(target=self._run, name="beatleader-election", daemon=True)
        self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        """Stop contending; the caller closes the session, which removes the node at once."""
        self._stopped.set()
        self._set_leading(False)
        self._wake.set()
        self._client.remove_listener(self._on_connection_state)

    def join(self, timeout: float) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wait_for_leadership(self, timeout: float) -> bool:
        """Block until leading, stopped, or ``timeout`` passed; return :attr:`is_leader`."""
        with self._cond:
            self._cond.wait_for(lambda: self._leading or self._stopped.is_set(), timeout)
            return self._leading

    def step_down(self, reason: str) -> None:
        """Stop leading now (the fence failed) and let the worker re-examine the queue."""
        if self._leading:
            logger.warning("beatleader: no longer leading: %s", reason)
        self._set_leading(False)
        self._wake.set()

    # -- listener and watches: flags only, no ZooKeeper calls ------------------------------------

    def _on_connection_state(self, state: str) -> None:
        self._observer.connection_changed(str(state))
        if state == KazooState.SUSPENDED:
            self._set_leading(False, "connection to ZooKeeper suspended")
        elif state == KazooState.LOST:
            self._session_expired = True
            self._set_leading(False, "ZooKeeper session lost")
        self._wake.set()

    def _on_own_node_event(self, event: WatchedEvent) -> None:
        if event.type == "DELETED" and event.path == self._node:
            self._own_node_deleted = True
            self._set_leading(False, "own contender node was deleted (resign)")
        self._wake.set()

    def _on_predecessor_event(self, _event: WatchedEvent) -> None:
        self._wake.set()

    def _set_leading(self, leading: bool, reason: str = "") -> None:
        with self._cond:
            changed = leading != self._leading
            if leading and not self._leading:
                self._generation += 1
                self._leader_since = time.time()
            elif not leading and self._leading:
                self._leader_since = None
                if reason:
                    logger.warning("beatleader: stopped leading: %s", reason)
            self._leading = leading
            self._cond.notify_all()
        if changed:
            self._observer.leadership_changed(leading, reason or "elected")

    # -- worker thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        waiting_since: float | None = None
        next_waiting_log = self.waiting_log_first
        while not self._stopped.is_set():
            self._wake.wait(timeout=self.waiting_log_first if waiting_since else None)
            self._wake.clear()
            if self._stopped.is_set():
                return
            if not self._client.connected:
                waiting_since = waiting_since or time.monotonic()
                waited = time.monotonic() - waiting_since
                if waited >= next_waiting_log:
                    logger.warning(
                        "beatleader: waiting for ZooKeeper at %s (%.0f s so far); not sending",
                        _hosts_label(self._client),
                        waited,
                    )
                    # doubling thresholds, pauses capped at waiting_log_max: 2, 4, 8 ... 64, 124
                    next_waiting_log = min(
                        next_waiting_log * 2, next_waiting_log + self.waiting_log_max
                    )
                continue
            waiting_since, next_waiting_log = None, self.waiting_log_first
            try:
                self._contend()
            except (KazooException, KazooTimeoutError) as exc:
                logger.warning("beatleader: election step failed (%r); retrying", exc)
                self._stopped.wait(self.retry_delay)
                self._wake.set()
            except Exception:  # this thread must never die: log, back off, go on
                logger.exception("beatleader: unexpected error in the election; retrying")
                self._stopped.wait(self.retry_delay)
                self._wake.set()

    def _contend(self) -> None:
        """One pass: make sure we have a node, then lead or watch our predecessor."""
        if self._session_expired:
            self._session_expired = False
            self._node = self._pending_prefix = None
        if self._own_node_deleted:
            self._own_node_deleted = False
            self._node = None
        if self._node is None:
            if self._prepare is not None:
                self._prepare()
            self._node = self._create_node()
            logger.info("beatleader: contending as %s", self._node)
        queue = sorted_contenders(self._client.get_children(self._election_path))
        own = posixpath.basename(self._node)
        if own not in queue:  # deleted between our watch and now
            self._own_node_deleted = True
            self._set_leading(False, "own contender node is gone")
            self._wake.set()
            return
        position = queue.index(own)
        if position == 0:
            self._watched = None
            if not self._leading:
                self._set_leading(True)
                logger.info("beatleader: leading (%s)", posixpath.basename(self._node))
            return
        self._set_leading(False, "another contender is first in the queue")
        predecessor = f"{self._election_path}/{queue[position - 1]}"
        if predecessor != self._watched:
            self._watched = predecessor
            logger.info(
                "beatleader: following at queue position %d of %d; watching %s",
                position + 1,
                len(queue),
                queue[position - 1],
            )
        if self._client.exists(predecessor, watch=self._on_predecessor_event) is None:
            self._wake.set()  # it vanished before the watch was set: look again

    def _create_node(self) -> str:
        """Create the own contender node, or find the one a lost reply created."""
        if self._pending_prefix is not None:
            token = posixpath.basename(self._pending_prefix)
            for child in self._client.get_children(self._election_path):
                if child.startswith(token):
                    return self._watch_own(f"{self._election_path}/{child}")
        self._pending_prefix = f"{self._election_path}/{uuid.uuid4().hex}{CONTENDER_MARKER}"
        node: str = self._client.create(
            self._pending_prefix, self._identifier, ephemeral=True, sequence=True, makepath=True
        )
        self._pending_prefix = None
        return self._watch_own(node)

    def _watch_own(self, node: str) -> str:
        self._pending_prefix = None
        if self._client.exists(node, watch=self._on_own_node_event) is None:
            raise KazooException(f"own contender node {node} vanished right after creation")
        return node


def _hosts_label(client: KazooClient) -> str:
    """``host:port,...`` of the servers ``client`` tries, for log lines."""
    return ",".join(f"{host}:{port}" for host, port in client.hosts)
