"""Leader election among beat instances over ZooKeeper ephemeral sequential znodes.

Each instance owns one contender node ``<path>/<uuid>__contender__<seq>``; the first well-formed,
ephemeral node in sequence order leads (``contenders.py``). A contender watches only its
predecessor (no herd effect) and its own node, so a waiting instance costs ZooKeeper nothing until
the queue in front of it changes.

Guarantees:

* :attr:`LeaderElection.is_leader` is true only between "own node is first, confirmed over a live
  connection" and the first sign that this may no longer hold: SUSPENDED (connection lost; the
  session may still live), LOST (session expired; the node is gone), the own node deleted or
  rewritten from outside (``beatleader resign``, a foreign client), or :meth:`step_down`.
  Connection listeners and watches only flip flags and wake the worker thread; every ZooKeeper
  call happens in that thread.
* Every pass of the worker re-reads the own node with a watch, so the watch is re-armed after each
  reconnect (kazoo does not restore watches on a new connection of the same session). The own
  node must be ephemeral, owned by this session, at data version 0 and hold this instance's data;
  otherwise (data rewritten, node replaced) it is deleted and a fresh node queues at the back, so
  the next contender leads. The fence (``state.py``, a check of version 0) therefore cannot be
  failed in a loop by a write to the contender node.
* Children of the election node that are not well-formed ephemeral contenders (a persistent node
  sorting first, a malformed name) never lead and never block: they are ignored, logged once per
  change as a WARNING naming the node, and reported to the observer's ``problem`` hook (kind
  ``foreign-contender``; a damaged own node: ``contender-node-damaged``).
* Repeated losses of leadership (:meth:`step_down`, replacing a damaged own node) back off
  exponentially up to ``Pacing.hold_max`` before leading or queueing again (``pacing.py``); the
  first one in a quiet period does not wait.
* After LOST, or after the own node was deleted, a new node is created at the back of the queue.
  A follower whose node vanished waits ``Pacing.orphan_delay`` first, so that when the whole tree
  is deleted (``rmr``) the previous leader usually queues first and continues from its own run
  counts; a follower that starts over from missing state starts new incarnations of the entries'
  state, whose task ids are new. The election never
  gives up, never exits the process, and no exception ends its thread (logged, retried).
* Each acquisition of leadership increments :attr:`LeaderElection.generation`, so the scheduler can
  tell that it must reload shared state before sending.

Not guaranteed: that a deleted tree never resets run counts: ``orphan_delay`` is timing, and a
follower may start from empty state (in a new incarnation: ordinals restart, task ids do not).
Nor that no other instance believes it leads at the same moment (a paused process cannot know it
was paused): that is what the fence in ``state.py`` is for: every send is preceded by a
transaction that checks the own node still exists at version 0. A foreign client with a live
session can still queue a well-formed ephemeral node (only ACLs stop that); and while this instance
leads it does not list the queue, so a foreign node is noticed when the queue is next read.

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
from contextlib import suppress

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import WatchedEvent

from beatleader.election.contenders import (
    CONTENDER_MARKER,
    ContenderQueue,
    QueueView,
    contender_sequence,
    ignored_reason,
    sorted_contenders,
)
from beatleader.election.pacing import Pacing
from beatleader.observe import Observer, Observers

logger = logging.getLogger("beatleader.election")

__all__ = ["CONTENDER_MARKER", "LeaderElection", "contender_sequence", "sorted_contenders"]


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
    #: Back-off, orphan delay and takeover settle (their tunables are on :class:`Pacing`).
    pacing_class = Pacing

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
        self._step_down_reason: str | None = None
        self._sync_before_check = False
        self._was_leader = False  # led, and has not seen another contender lead since
        self._queue = ContenderQueue(client, path)
        self._ignored: dict[str, str] = {}  # foreign children last reported
        self._watched: str | None = None  # the predecessor last logged as watched
        self._pacing = self.pacing_class(self._stopped, self._wake)
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
        if self._client.connected:  # started on a connected client: no CONNECTED event will come
            self._observer.connection_changed(str(KazooState.CONNECTED))
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
        """Stop leading now (the fence failed); the worker re-examines the own node and the queue.

        A damaged own node is replaced by a fresh one at the back of the queue; a sound one may
        lead again, after the back-off hold when step-downs repeat.
        """
        self._step_down_reason = reason
        self._set_leading(False, reason)
        self._wake.set()

    # -- listener and watches: flags only, no ZooKeeper calls, never raise -------------------------

    def _on_connection_state(self, state: str) -> None:
        try:
            self._observer.connection_changed(str(state))
            if state == KazooState.SUSPENDED:
                self._set_leading(False, "connection to ZooKeeper suspended")
            elif state == KazooState.LOST:
                self._session_expired = True
                self._set_leading(False, "ZooKeeper session lost")
        except Exception:
            logger.exception("beatleader: error in the connection listener; going on")
        finally:
            self._wake.set()  # CONNECTED too: the worker re-reads and re-watches the own node

    def _on_own_node_event(self, event: WatchedEvent) -> None:
        try:
            if event.path != self._node:
                return  # a node this instance has already replaced
            if event.type == "DELETED":
                self._own_node_deleted = True
                self._set_leading(False, "own contender node was deleted (resign)")
            elif event.type == "CHANGED":
                self._set_leading(False, "own contender node was rewritten by another client")
        except Exception:
            logger.exception("beatleader: error in the own-node watch; going on")
        finally:
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
            self._pass()

    def _pass(self) -> None:
        """One :meth:`_contend`; any error is logged, waited out and retried."""
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
        """One pass: make sure we have a sound node, then lead or watch our predecessor."""
        self._consume_flags()
        if self._node is None:
            if self._pacing.held():
                return
            if self._prepare is not None:
                self._prepare()
            self._node = self._create_node()
            logger.info("beatleader: contending as %s", self._node)
        if not self._own_node_sound(self._node):
            return
        view = self._queue.read()
        self._report_ignored(view.ignored)
        own = posixpath.basename(self._node)
        if own not in view.contenders:  # vanished since we read it: the next pass sees why
            self._wake.set()
            return
        queue, position, watched = self._sound_predecessor(view, own)
        if queue is None:
            self._wake.set()  # the predecessor vanished as we looked: read again
        elif position == 0:
            self._lead()
        else:
            self._follow(queue, position, watched)

    def _sound_predecessor(
        self, view: QueueView, own: str
    ) -> tuple[tuple[str, ...] | None, int, bool]:
        """The queue without the persistent nodes ahead of ``own`` that stand right before it,
        the own position in it, and whether the predecessor's watch was just set.

        A predecessor whose ``ephemeralOwner`` is not known yet is stat'ed with the watch
        ``_follow`` needs (one request that serves both); a persistent one is ignored (and
        reported) and the next one down is looked at. None: a node vanished meanwhile.
        """
        queue = list(view.contenders)
        position = queue.index(own)
        watched = False
        found: dict[str, str] = {}
        while position > 0:
            name = queue[position - 1]
            if self._queue.owner(name) is not None:
                break
            stat = self._client.exists(
                f"{self._election_path}/{name}", watch=self._on_predecessor_event
            )
            if stat is None:
                return None, 0, False
            self._queue.note_owner(name, int(stat.ephemeralOwner))
            if int(stat.ephemeralOwner) != 0:
                watched = True
                break
            found[name] = str(ignored_reason(name, 0))
            queue.pop(position - 1)
            position -= 1
        if found:
            self._report_ignored({**self._ignored, **found})
        return tuple(queue), position, watched

    def _consume_flags(self) -> None:
        """Act on what the listener, the watches and :meth:`step_down` flagged."""
        if self._session_expired:
            self._session_expired = False
            self._node = self._pending_prefix = None
        if self._own_node_deleted:
            self._own_node_deleted = False
            self._drop_own_node()
        if self._step_down_reason is not None:
            self._step_down_reason = None
            self._sync_before_check = True  # a lagging ensemble member must not say "sound"
            self._pacing.loss()

    def _drop_own_node(self) -> None:
        """The own node is gone: queue again (a follower only after ``orphan_delay``)."""
        if self._node is None:
            return
        if not self._was_leader:  # let an ex-leader whose node went too (tree deleted) go first
            self._pacing.orphaned()
        self._node = None
        self._set_leading(False, "own contender node is gone")

    def _own_node_sound(self, node: str) -> bool:
        """Re-read the own node, re-arming its watch; replace it when it is not sound."""
        if self._sync_before_check:
            with suppress(NoNodeError):
                self._client.sync(node)
            self._sync_before_check = False
        try:
            data, stat = self._client.get(node, watch=self._on_own_node_event)
        except NoNodeError:
            self._drop_own_node()
            self._wake.set()
            return False
        problem = self._own_node_problem(data, stat.version, int(stat.ephemeralOwner))
        if problem is None:
            self._queue.note_owner(posixpath.basename(node), int(stat.ephemeralOwner))
            return True
        logger.warning(
            "beatleader: own contender node %s %s; queueing again with a fresh node", node, problem
        )
        self._observer.problem("contender-node-damaged", f"{node}: {problem}")
        self._set_leading(False, f"own contender node {problem}")
        with suppress(NoNodeError):
            self._client.delete(node)
        self._node = None
        self._pacing.loss()
        self._wake.set()
        return False

    def _own_node_problem(self, data: bytes, version: int, owner: int) -> str | None:
        client_id = self._client.client_id
        if client_id is not None and owner != client_id[0]:
            return f"is owned by session {owner:#x}, not this one ({client_id[0]:#x})"
        if version != 0:
            return f"was rewritten by another client (data version {version})"
        if data != self._identifier:
            return "holds data this instance did not write"
        return None

    def _lead(self) -> None:
        self._watched = None
        if self._leading or self._pacing.held() or self._pacing.settling():
            return
        self._was_leader = True
        self._set_leading(True)
        logger.info("beatleader: leading (%s)", posixpath.basename(self._node or ""))

    def _follow(self, queue: tuple[str, ...], position: int, watched: bool = False) -> None:
        self._was_leader = False
        self._pacing.not_first()
        self._set_leading(False, "another contender is first in the queue")
        name = queue[position - 1]
        predecessor = f"{self._election_path}/{name}"
        if predecessor != self._watched:
            self._watched = predecessor
            logger.info(
                "beatleader: following at queue position %d of %d; watching %s",
                position + 1,
                len(queue),
                name,
            )
        if watched:  # stat'ed with this watch a moment ago (``_sound_predecessor``)
            return
        stat = self._client.exists(predecessor, watch=self._on_predecessor_event)
        if stat is None:
            self._wake.set()  # it vanished before the watch was set: look again
        elif int(stat.ephemeralOwner) == 0:
            self._queue.note_owner(name, 0)  # a persistent node: ignored, watch the next one
            self._wake.set()
        else:
            self._queue.note_owner(name, int(stat.ephemeralOwner))

    def _report_ignored(self, ignored: dict[str, str]) -> None:
        """Log and report each foreign child of the election node once (per change)."""
        new = sorted(ignored.keys() - self._ignored.keys())
        self._ignored = dict(ignored)  # first: a raising observer must not make us report again
        for name in new:
            detail = f"{self._election_path}/{name!r}: {ignored[name]}"
            logger.warning("beatleader: ignoring foreign node in the election: %s", detail)
            self._observer.problem("foreign-contender", detail)

    # -- node creation ---------------------------------------------------------------------------

    def _create_node(self) -> str:
        """Create the own contender node, or find the one a lost reply created."""
        if self._pending_prefix is not None:
            token = posixpath.basename(self._pending_prefix)
            for child in self._client.get_children(self._election_path):
                if child.startswith(token):
                    self._pending_prefix = None
                    return f"{self._election_path}/{child}"
        self._pending_prefix = f"{self._election_path}/{uuid.uuid4().hex}{CONTENDER_MARKER}"
        node: str = self._client.create(
            self._pending_prefix, self._identifier, ephemeral=True, sequence=True, makepath=True
        )
        self._pending_prefix = None
        return node


def _hosts_label(client: KazooClient) -> str:
    """``host:port,...`` of the servers ``client`` tries, for log lines."""
    return ",".join(f"{host}:{port}" for host, port in client.hosts)
