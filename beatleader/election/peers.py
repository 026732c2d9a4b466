"""Catching misconfigured peers: another app, or another schedule, contending on the same path.

Two different apps started with the same ``beatleader_path`` would share one election: only the
leader's schedule runs, silently. :class:`PeerWatch` runs in every instance and compares
ContenderInfo: a contender whose ``app`` differs from this instance's is reported as
``app-mismatch``; one of the same app whose schedule fingerprint differs as
``schedule-mismatch`` (expected for the length of a rolling deploy). Each is logged as an ERROR
naming both sides and reported to ``Observer.problem`` (``beatleader_problems_total{kind}``),
once per contender node. Who looks at whom, so that a waiting instance stays silent:

* **a follower** checks once, when it joins (each new contender node of its own): it lists
  ``election/`` and reads the leader's node (the schedule that runs): 2 requests, whatever the
  number of contenders; then nothing while it waits (no watch, nothing on a reconnection);
* **the leader** watches ``election/`` and reads each contender node it has not seen yet: one
  ``get_children`` with a watch per change, one ``get`` per new contender (contender data is
  written once). It reports every disagreeing contender in its own log and metrics, and
  ``beatleader status`` reads the queue itself and warns about both kinds.

Guarantees:

* A follower makes 2 requests per contender node of its own and none while it waits; the leader
  makes 1 + (new contenders) per change of the queue (and per reconnection, as kazoo does not
  restore watches).
* Every ZooKeeper call happens in the watch's own daemon thread; the watch, the connection
  listener and the leadership hook only wake it. No exception ends the thread (logged, retried
  after ``retry_delay``).
* It never changes the election: a mismatch is reported, the instances keep contending.

Not guaranteed: that a follower sees a disagreeing follower (the leader reports it, and
``status``); that a node from a version without ``app`` is checked for its app (it has none;
its fingerprint is still compared); that a contender that joins and leaves between two readings
is seen.
"""

from __future__ import annotations

import logging
import posixpath
import threading
from collections.abc import Callable

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError

from beatleader.election.contenders import sorted_contenders
from beatleader.observe import Observer
from beatleader.zk.layout import ContenderInfo

logger = logging.getLogger("beatleader.peers")

APP_MISMATCH = "app-mismatch"
SCHEDULE_MISMATCH = "schedule-mismatch"


def mismatch(own: ContenderInfo, other: ContenderInfo) -> str | None:
    """The problem kind of ``other`` seen from ``own``, or None when they agree."""
    if own.app is not None and other.app is not None and own.app != other.app:
        return APP_MISMATCH
    if own.fingerprint != other.fingerprint:
        return SCHEDULE_MISMATCH
    return None


def describe(kind: str, path: str, own: ContenderInfo, other: ContenderInfo) -> str:
    """The one-line ERROR text for a mismatch."""
    who = f"{other.identity} (host {other.host}, pid {other.pid})"
    if kind == APP_MISMATCH:
        return (
            f"another app, {other.app!r}, contends on {path} with this app {own.app!r}: {who}; "
            "only the leader's schedule runs. Give each app its own beatleader_path"
        )
    return (
        f"an instance with a different schedule contends on {path}: {who} runs schedule "
        f"{other.fingerprint}, this one {own.fingerprint}; only the leader's schedule runs "
        "(expected during a rolling deploy, an error if it lasts)"
    )


class PeerWatch(Observer):
    """Checks ``election/`` under ``path`` for contenders that disagree with ``own``.

    It is an :class:`Observer` of the election (``leadership_changed``): leading, it watches the
    queue; following, it looks once per own contender node.
    """

    #: Pause after a failed ZooKeeper call before reading again, seconds.
    retry_delay = 1.0

    def __init__(
        self,
        client: KazooClient,
        path: str,
        own: ContenderInfo,
        observer: Observer,
        own_node: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._client = client
        self._path = path
        self._own = own
        self._observer = observer
        self._own_node = own_node
        self._infos: dict[str, ContenderInfo | None] = {}
        self._reported: set[str] = set()
        self._leading = False
        #: The own contender node a follower last looked from (it looks once per node).
        self._joined: str | None = None
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._client.add_listener(self._on_state)
        self._thread = threading.Thread(target=self._run, name="beatleader-peers", daemon=True)
        self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self._client.remove_listener(self._on_state)

    def join(self, timeout: float) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def leadership_changed(self, leading: bool, reason: str) -> None:
        self._leading = leading
        self._wake.set()

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self._wake.set()  # a new connection has no watch: the leader reads (and watches) again

    def _on_children(self, _event: object) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stopped.is_set():
                return
            if not self._client.connected:
                continue  # the CONNECTED listener wakes us
            try:
                if self._leading:
                    self._watch()
                else:
                    self._join()
            except (KazooException, KazooTimeoutError) as exc:
                logger.debug("beatleader: reading the election queue failed (%r)", exc)
                self._retry()
            except Exception:  # this thread must never die silently
                logger.exception("beatleader: unexpected error while checking peers; retrying")
                self._retry()

    def _retry(self) -> None:
        self._stopped.wait(self.retry_delay)
        self._wake.set()

    def _join(self) -> None:
        """A follower: once per own contender node, the leader's node (the schedule that runs)."""
        own = posixpath.basename(self._own_node() or "")
        if not own:
            self._retry()  # not contending yet: look again soon (no request meanwhile)
            return
        if own == self._joined:
            return
        children = self._client.get_children(self._path)
        self._joined = own
        queue = sorted_contenders(children)
        if queue and queue[0] != own:
            self._read([queue[0]])

    def _watch(self) -> None:
        """The leader: every contender node not read yet, and a watch for the next change."""
        children = self._client.get_children(self._path, watch=self._on_children)
        names = set(sorted_contenders(children))
        self._infos = {k: v for k, v in self._infos.items() if k in names}
        self._reported &= names
        own = posixpath.basename(self._own_node() or "")
        self._read([n for n in names if n not in self._infos and n != own])

    def _read(self, names: list[str]) -> None:
        pending = [(n, self._client.get_async(f"{self._path}/{n}")) for n in names]
        for name, result in pending:
            try:
                data, _stat = result.get()
            except NoNodeError:
                continue  # left meanwhile
            self._infos[name] = info = ContenderInfo.decode(data)
            if info is not None:
                self._check(name, info)

    def _check(self, name: str, info: ContenderInfo) -> None:
        kind = mismatch(self._own, info)
        if kind is None or name in self._reported:
            return
        self._reported.add(name)
        detail = describe(kind, posixpath.dirname(self._path), self._own, info)
        logger.error("beatleader: %s", detail)
        self._observer.problem(kind, detail)
