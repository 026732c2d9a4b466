"""The leader's reads of runtime definitions, pauses, run-now and backfill requests, and watches.

Under the app root (``layout.py``): ``definitions/<quoted name>`` (``definitions.py``),
``paused/<quoted name>``, ``requests/<quoted name>__run__<seq>`` and
``backfills/<quoted name>__run__<seq>`` (each backfill request's data is read with its
listing). :class:`DefinitionWatch` is used by the leader only (``runtime.py``), in its tick
thread:

* :meth:`DefinitionWatch.load`, at each takeover: every definition (one listing, then every node
  read by ``multiread.read_nodes``, as ``StateStore.load`` reads the run state), the paused
  names and the requests, each read leaving a watch: a children watch on the four folders, a
  data watch on every definition node.
* :meth:`DefinitionWatch.refresh`, at each tick while leading: only what the watches reported
  since: one listing when a folder's children changed, one read per definition node added or
  changed, none for one removed (the listing tells). The cost of a change is O(1) requests,
  whatever the number of definitions (a listing is one request; its reply carries every name).

Guarantees: a watch callback (kazoo's event thread) makes no request, it only marks what to read;
it marks nothing unless this instance leads in the election generation whose :meth:`load` armed
the watches, so a watch set under one leadership does not act after it ended (the next takeover's
full read covers whatever changed meanwhile). A missing folder is watched for its creation
(``exists``), so nothing is created by a reader. Every definition read is validated
(``Definition.parse``); a node that does not parse, or that cannot be read (an ACL), comes back as
a problem for that name, never as an exception; connection and session errors are raised (the
scheduler's tick reloads after them).

Not guaranteed: that two changes of one node in quick succession are both seen (the latest is:
a read returns the current data and re-arms the watch). Followers hold no watches from this module
except the ones left by a leadership that ended (ZooKeeper fires each at most once; it is ignored).
"""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.interfaces import IAsyncResult
from kazoo.protocol.states import EventType, WatchedEvent

from beatleader.beat.state import SESSION_ERRORS
from beatleader.schedules.definitions import Definition
from beatleader.zk import layout
from beatleader.zk.multiread import read_nodes


@dataclass(frozen=True)
class RunRequest:
    """One run-now request node; ``name`` is None when the node's name is not a request's."""

    node: str
    path: str
    name: str | None
    sequence: int
    #: The node's data (a backfill request's range); b"" for a run-now request (not read).
    data: bytes = b""


@dataclass
class Reading:
    """What a load or a refresh read. A refresh leaves unchanged parts None / empty."""

    #: entry name -> its definition, or None when the node is gone or unusable (see problems).
    definitions: dict[str, Definition | None] = field(default_factory=dict)
    #: entry name -> why its node was ignored (unparsable, unreadable).
    problems: dict[str, str] = field(default_factory=dict)
    #: Every paused entry name (None: not read this time).
    paused: frozenset[str] | None = None
    #: Every run-now request, oldest first (None: not read this time).
    requests: list[RunRequest] | None = None
    #: Every backfill request, oldest first, with its data (None: not read this time).
    backfills: list[RunRequest] | None = None
    #: folder path -> why it cannot be listed (an ACL): read as empty, not watched.
    unlisted: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        changed = self.paused is not None or self.requests is not None
        changed = changed or self.backfills is not None
        return changed or bool(self.definitions or self.unlisted)


class DefinitionWatch:
    """Reads and watches ``definitions/``, ``paused/``, ``requests/`` and ``backfills/``.

    ``generation`` tells the election generation while this instance leads, None otherwise.
    """

    #: Listings retried when their folder is created or deleted between two requests.
    list_attempts = 3

    def __init__(
        self, client: KazooClient, root: str, generation: Callable[[], int | None]
    ) -> None:
        self._client = client
        self._generation = generation
        self._definitions = layout.definitions_path(root)
        self._paused = layout.paused_path(root)
        self._requests = layout.requests_path(root)
        self._backfills = layout.backfills_path(root)
        self._lock = threading.Lock()
        self._armed: int | None = None
        self._known: set[str] = set()
        self._children_changed = False
        self._paused_changed = False
        self._requests_changed = False
        self._backfills_changed = False
        self._changed: set[str] = set()

    @property
    def client(self) -> KazooClient:
        """The client (session) whose watches this reads with."""
        return self._client

    @property
    def armed(self) -> int | None:
        """The generation whose :meth:`load` armed the watches (None before the first)."""
        return self._armed

    # -- reads ---------------------------------------------------------------------------------

    def load(self, generation: int) -> Reading:
        """Everything, with fresh watches; marks taken before it are superseded by it."""
        return self.start_load(generation)()

    def start_load(self, generation: int) -> Callable[[], Reading]:
        """:meth:`load` in two steps: send the reads of every definition now, and return the
        function that waits for them (and lists the pauses and requests), so that the caller
        can read other nodes meanwhile (one pipeline is faster than two in a row)."""
        with self._lock:
            self._armed = generation
            self._children_changed = self._paused_changed = self._requests_changed = False
            self._backfills_changed = False
            self._changed.clear()
        reading = Reading()
        children = self._list(self._definitions, self._on_definitions, reading)
        self._known = set(children)
        pending = self._send_reads(children)

        def finish() -> Reading:
            self._take_reads(pending, reading)
            reading.paused = self._paused_names(reading)
            reading.requests = self._request_nodes(reading)
            reading.backfills = self._backfill_nodes(reading)
            return reading

        return finish

    def refresh(self) -> Reading:
        """What changed since the last load or refresh, as the watches marked it."""
        with self._lock:
            children, paused, requests, backfills = (
                self._children_changed,
                self._paused_changed,
                self._requests_changed,
                self._backfills_changed,
            )
            self._children_changed = self._paused_changed = self._requests_changed = False
            self._backfills_changed = False
            changed, self._changed = self._changed, set()
        reading = Reading()
        if children:
            listed = set(self._list(self._definitions, self._on_definitions, reading))
            for child in self._known - listed:
                reading.definitions[layout.unquote_entry_name(child)] = None
            changed = (changed | (listed - self._known)) & listed
            self._known = listed
        else:
            changed &= self._known
        if changed:
            self._take_reads(self._send_reads(sorted(changed)), reading)
        if paused:
            reading.paused = self._paused_names(reading)
        if requests:
            reading.requests = self._request_nodes(reading)
        if backfills:
            reading.backfills = self._backfill_nodes(reading)
        return reading

    def _send_reads(self, children: list[str]) -> list[tuple[str, IAsyncResult]]:
        """Send a read of each of ``children`` (``multiread``), each with a data watch."""
        paths = [f"{self._definitions}/{child}" for child in children]
        results = read_nodes(self._client, paths, watch=self._on_definition)
        return list(zip(children, results, strict=True))

    def _take_reads(self, pending: list[tuple[str, IAsyncResult]], reading: Reading) -> None:
        for child, result in pending:
            name = layout.unquote_entry_name(child)
            try:
                data, _ = result.get()
            except NoNodeError:
                self._known.discard(child)
                reading.definitions[name] = None
                continue
            except KazooException as exc:
                if isinstance(exc, SESSION_ERRORS):
                    raise
                reading.definitions[name] = None
                reading.problems[name] = f"cannot be read ({exc!r})"
                continue
            definition, problem = Definition.parse(data)
            reading.definitions[name] = definition
            if definition is None:
                reading.problems[name] = problem or "invalid definition"

    def _paused_names(self, reading: Reading) -> frozenset[str]:
        children = self._list(self._paused, self._on_paused, reading)
        return frozenset(layout.unquote_entry_name(child) for child in children)

    def _request_nodes(self, reading: Reading) -> list[RunRequest]:
        nodes = self._list(self._requests, self._on_requests, reading)
        return _requests(self._requests, nodes)

    def _backfill_nodes(self, reading: Reading) -> list[RunRequest]:
        """The backfill requests with their data (one multi-read); a node gone meanwhile is
        left out, one that cannot be read comes with b"" (the scheduler reports it)."""
        found = _requests(self._backfills, self._list(self._backfills, self._on_backfills, reading))
        results = read_nodes(self._client, [request.path for request in found])
        kept = []
        for request, result in zip(found, results, strict=True):
            try:
                data, _ = result.get()
            except NoNodeError:
                continue
            except KazooException as exc:
                if isinstance(exc, SESSION_ERRORS):
                    raise
                data = b""
            kept.append(replace(request, data=data or b""))
        return kept

    def _list(
        self, path: str, watch: Callable[[WatchedEvent], None], reading: Reading
    ) -> list[str]:
        """The children of ``path`` with a children watch; [] and a creation watch if missing.

        A folder that cannot be listed (an ACL denies it) is [] and reported in ``reading``:
        one folder must not keep the leader from scheduling everything else.
        """
        for _ in range(self.list_attempts):
            try:
                return list(self._client.get_children(path, watch=watch))
            except NoNodeError:
                if self._client.exists(path, watch=watch) is None:
                    return []
            except KazooException as exc:
                if isinstance(exc, SESSION_ERRORS):
                    raise
                reading.unlisted[path] = f"cannot be listed ({exc!r})"
                return []
        return []

    # -- watches (kazoo's event thread: no request here) ---------------------------------------

    def _acts(self, event: WatchedEvent) -> bool:
        if event.type == EventType.NONE:  # kazoo's notice of a lost session, not a change
            return False
        armed = self._armed
        return armed is not None and self._generation() == armed

    def _on_definitions(self, event: WatchedEvent) -> None:
        if self._acts(event):
            with self._lock:
                self._children_changed = True

    def _on_definition(self, event: WatchedEvent) -> None:
        if self._acts(event):
            with self._lock:
                self._changed.add(posixpath.basename(event.path))

    def _on_paused(self, event: WatchedEvent) -> None:
        if self._acts(event):
            with self._lock:
                self._paused_changed = True

    def _on_requests(self, event: WatchedEvent) -> None:
        if self._acts(event):
            with self._lock:
                self._requests_changed = True

    def _on_backfills(self, event: WatchedEvent) -> None:
        if self._acts(event):
            with self._lock:
                self._backfills_changed = True


def _requests(folder: str, nodes: list[str]) -> list[RunRequest]:
    """The request nodes ``nodes`` of ``folder``, oldest first (by sequence, then name)."""
    found = []
    for node in nodes:
        _, _, tail = node.rpartition(layout.REQUEST_MARKER)
        sequence = int(tail) if tail.isascii() and tail.isdigit() else -1
        name = layout.request_entry_name(node)
        found.append(RunRequest(node, f"{folder}/{node}", name, sequence))
    return sorted(found, key=lambda request: (request.sequence, request.node))
