"""Shared schedule state in ZooKeeper: loading it on takeover, and the fenced, batched commit.

Every entry has one persistent znode ``<root>/entries/<quoted name>`` holding a JSON
:class:`~beatleader.zk.layout.EntryState`. Only a leader writes it, and only through
:meth:`StateStore.commit`, which sends one ZooKeeper transaction (multi-op) per batch::

    check(own contender node, version=0)
    set_data(entry, new state, version=expected)    # or create(entry) for a first run
    delete(requests/<entry>__run__<seq>)            # only with a run-now request it consumes
    ...                                             # every entry due in this tick

Guarantees:

* A batch commits only while this instance's session is alive and its contender node exists
  (a paused or partitioned ex-leader's node is gone, so its batch fails), and only if nobody
  wrote any of its entries since this instance read them.
* A run-now request (``Write.consume``) is deleted in the same transaction as the state of the
  run it asked for: the run commits if and only if the request is consumed, so it runs once
  (a request already gone is reported in ``CommitOutcome.gone``, its run not committed).
  :meth:`StateStore.discard` deletes requests that name no entry, under the same fence.
* A batch commits whole or not at all. Batches larger than ``max_ops_per_commit`` are split,
  each with its own check.
* **One bad write does not block the others**: a write refused on its own (version conflict, a
  read-only ACL on one znode, a name ZooKeeper rejects) is taken out and the rest of its batch is
  sent again; the refused ones are reported in :class:`CommitOutcome` (``conflicts``, ``failed``).
* **A lost reply is not a lost batch**: a connection error while a batch is in flight ends the
  commit, the batches committed before it are reported as committed, the batch in flight as
  ``uncertain`` (it may or may not have committed; a reload tells), the rest as not tried.
  Nothing is raised for it: :meth:`StateStore.commit` returns values only.
* :meth:`StateStore.load` validates every entry znode (:meth:`EntryState.parse`); unreadable data
  is returned as a :class:`StoredState` with ``state=None``, its version, mtime and the reason,
  never as "no state": the scheduler decides what it may continue from (``planning.py``).

Not guaranteed here: that a committed run is published; the scheduler's outbox does that (a run
is committed with ``published=false`` and marked once it is out).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    RolledBackError,
    RuntimeInconsistency,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import ZnodeStat

from beatleader.zk import layout
from beatleader.zk.layout import EntryState
from beatleader.zk.multiread import read_nodes

#: What a failed transaction answers for the ops that did not fail themselves (before and after).
NOT_APPLIED = (RolledBackError, RuntimeInconsistency)

#: Contender nodes are never rewritten, so their data version stays 0 for their whole life.
CONTENDER_NODE_VERSION = 0

#: What a request can raise when the connection or session fails under it.
CONNECTION_ERRORS = (KazooException, KazooTimeoutError)

#: The errors that mean "no answer" rather than "ZooKeeper refused this one request".
SESSION_ERRORS = (
    ConnectionLoss,
    ConnectionClosedError,
    SessionExpiredError,
    OperationTimeoutError,
    RuntimeInconsistency,
)


@dataclass(frozen=True)
class StoredState:
    """An entry's state as read, with the znode version a commit must expect."""

    state: EntryState | None
    version: int
    #: ZooKeeper server time (epoch seconds) of the znode's last write.
    mtime: float = 0.0
    #: Why ``state`` is None: the data is unreadable ("" when it is readable).
    problem: str = ""


@dataclass(frozen=True)
class Write:
    """One entry's new state; ``expected_version`` None means the znode does not exist yet."""

    name: str
    state: EntryState
    expected_version: int | None
    #: A run-now request node to delete in the same transaction (the run it asked for).
    consume: str | None = None


@dataclass
class CommitOutcome:
    """What a :meth:`StateStore.commit` achieved."""

    #: entry name -> new znode version, for every write that committed.
    committed: dict[str, int] = field(default_factory=dict)
    #: entry name -> ZooKeeper server time (epoch s) of its commit, where the reply says it.
    mtimes: dict[str, float] = field(default_factory=dict)
    #: The fence failed: the own contender node is gone (or was never there).
    lost_leadership: bool = False
    #: Entries somebody else wrote since they were read (version conflict).
    conflicts: list[str] = field(default_factory=list)
    #: entry name -> why ZooKeeper refused its write (not a conflict: ACL, bad name, ...).
    failed: dict[str, str] = field(default_factory=dict)
    #: Writes not committed because the request they consume is gone (consumed or withdrawn).
    gone: list[str] = field(default_factory=list)
    #: Writes whose batch was in flight when the connection failed: committed or not, unknown.
    uncertain: list[str] = field(default_factory=list)
    #: The connection error that ended the commit ("" when none).
    error: str = ""
    #: Monotonic time the commit was sent (set by the caller that timed it).
    started: float = 0.0

    def merge(self, other: CommitOutcome) -> None:
        """Add ``other`` (a later commit of the same tick) to this outcome."""
        self.committed.update(other.committed)
        self.mtimes.update(other.mtimes)
        self.lost_leadership = self.lost_leadership or other.lost_leadership
        self.conflicts.extend(other.conflicts)
        self.gone.extend(other.gone)
        self.failed.update(other.failed)
        self.uncertain.extend(other.uncertain)
        self.error = self.error or other.error

    @property
    def ok(self) -> bool:
        return not (
            self.lost_leadership
            or self.conflicts
            or self.gone
            or self.failed
            or self.uncertain
            or self.error
        )


class StateStore:
    """Reads and fence-writes the entry state znodes under ``root``."""

    #: Largest number of entry writes in one ZooKeeper transaction (far below jute.maxbuffer).
    max_ops_per_commit = 250

    def __init__(self, client: KazooClient, root: str) -> None:
        self._client = client
        self._root = root
        self._entries_path = layout.entries_path(root)

    def load(self) -> dict[str, StoredState]:
        """Every entry's stored state, by entry name (``multiread.read_nodes``: a few requests)."""
        self._client.ensure_path(self._entries_path)
        # A server of an ensemble may lag behind; sync makes it catch up with the ZooKeeper leader
        # so a new leader does not start from stale state (the fence would refuse it anyway).
        self._client.sync(self._entries_path)
        children = self._client.get_children(self._entries_path)
        paths = [f"{self._entries_path}/{child}" for child in children]
        states: dict[str, StoredState] = {}
        for child, result in zip(children, read_nodes(self._client, paths), strict=True):
            found = self._stored(child, result)
            if found is not None:
                states[layout.unquote_entry_name(child)] = found
        return states

    def load_one(self, name: str) -> StoredState | None:
        """One entry's stored state (None: it has none): one read."""
        child = layout.quote_entry_name(name)
        return self._stored(child, self._client.get_async(f"{self._entries_path}/{child}"))

    def _stored(self, child: str, result: Any) -> StoredState | None:
        """The state a read of ``entries/<child>`` gave (None: the node is gone)."""
        try:
            data, stat = result.get()
        except NoNodeError:
            return None
        except KazooException as exc:
            if isinstance(exc, SESSION_ERRORS):
                raise
            return self._unreadable(child, exc)  # e.g. an ACL that denies reading it
        state, problem = EntryState.parse(data)
        return StoredState(state, stat.version, stat.mtime / 1000.0, problem)

    def _unreadable(self, child: str, exc: Exception) -> StoredState | None:
        """An entry whose data cannot be read: its version and mtime still bound its state."""
        stat = self._client.exists(f"{self._entries_path}/{child}")
        if stat is None:
            return None
        return StoredState(None, stat.version, stat.mtime / 1000.0, f"cannot be read: {exc!r}")

    def server_time(self, note: bytes = b"") -> float:
        """ZooKeeper's server time now (epoch s): the ``mtime`` of a write of ``note`` to the
        clock node (``clockview.clock_note``: who wrote it and its own clock, for ``status``)."""
        path = layout.clock_path(self._root)
        try:
            stat = self._client.set(path, note)
        except NoNodeError:
            with contextlib.suppress(NodeExistsError):
                self._client.create(path, note, makepath=True)
            stat = self._client.set(path, note)
        return float(stat.mtime) / 1000.0

    def commit(self, fence_node: str, writes: Sequence[Write]) -> CommitOutcome:
        """Write ``writes`` under the fence of ``fence_node``; see the module docstring."""
        outcome = CommitOutcome()
        size = self.max_ops_per_commit
        try:
            if any(write.expected_version is None for write in writes):
                self._client.ensure_path(self._entries_path)  # first run of some entry
        except CONNECTION_ERRORS as exc:
            outcome.error = repr(exc)
            return outcome
        for start in range(0, len(writes), size):
            batch = list(writes[start : start + size])
            try:
                self._commit_isolated(fence_node, batch, outcome)
            except CONNECTION_ERRORS as exc:
                outcome.uncertain.extend(w.name for w in batch if w.name not in outcome.committed)
                outcome.error = repr(exc)
                return outcome
            if outcome.lost_leadership:
                return outcome
        return outcome

    def _commit_isolated(self, fence_node: str, batch: list[Write], outcome: CommitOutcome) -> None:
        """Commit ``batch``; take out every write refused on its own and send the rest again."""
        while batch:
            refused = self._commit_batch(fence_node, batch, outcome)
            if not refused or outcome.lost_leadership:
                return
            batch = [write for write in batch if write.name not in refused]

    def _commit_batch(
        self, fence_node: str, batch: Sequence[Write], outcome: CommitOutcome
    ) -> set[str]:
        """One transaction; returns the names of the writes refused on their own (if any)."""
        transaction = self._client.transaction()
        transaction.check(fence_node, CONTENDER_NODE_VERSION)
        sent: list[Write] = []
        refused: set[str] = set()
        for write in batch:
            path = layout.entry_path(self._root, write.name)
            ops = len(transaction.operations)
            try:
                if write.expected_version is None:
                    transaction.create(path, write.state.encode())
                else:
                    transaction.set_data(path, write.state.encode(), version=write.expected_version)
                if write.consume is not None:
                    transaction.delete(write.consume)
            except (ValueError, TypeError) as exc:  # kazoo refuses the path before sending
                outcome.failed[write.name] = f"invalid znode path {path!r}: {exc}"
                refused.add(write.name)
                del transaction.operations[ops:]  # none of this write's ops is sent
                continue
            sent.append(write)
        if not sent:
            return refused
        fence_result, *results = transaction.commit()
        if isinstance(fence_result, Exception) and not isinstance(fence_result, NOT_APPLIED):
            outcome.lost_leadership = True
            return refused
        answers = iter(results)
        for write in sent:
            result = next(answers)
            consumed = next(answers) if write.consume is not None else None
            if isinstance(result, ZnodeStat):
                outcome.committed[write.name] = result.version
                outcome.mtimes[write.name] = result.mtime / 1000.0
            elif isinstance(result, str):  # create returns the path; a new znode is version 0
                outcome.committed[write.name] = 0
            elif isinstance(result, BadVersionError | NodeExistsError | NoNodeError):
                outcome.conflicts.append(write.name)
                refused.add(write.name)
            elif not isinstance(result, NOT_APPLIED):
                outcome.failed[write.name] = repr(result)
                refused.add(write.name)
            elif isinstance(consumed, NoNodeError):
                outcome.gone.append(write.name)
                refused.add(write.name)
            elif isinstance(consumed, Exception) and not isinstance(consumed, NOT_APPLIED):
                outcome.failed[write.name] = f"cannot consume its run request: {consumed!r}"
                refused.add(write.name)
        if not refused:  # a failed transaction always names its culprit; never drop silently
            for write in sent:
                if write.name not in outcome.committed:
                    outcome.failed[write.name] = "not applied, and ZooKeeper named no reason"
        return refused

    def annotate(self, fence_node: str, path: str, data: bytes) -> tuple[str, bool]:
        """Write ``data`` to the node ``path`` (a backfill request it accepts) under the fence.

        Returns ``"written"``, ``"gone"`` or why ZooKeeper refused (a ``repr``), and whether the
        fence failed.
        """
        transaction = self._client.transaction()
        transaction.check(fence_node, CONTENDER_NODE_VERSION)
        transaction.set_data(path, data)
        fence_result, result = transaction.commit()
        if isinstance(fence_result, Exception) and not isinstance(fence_result, NOT_APPLIED):
            return "fence", True
        if isinstance(result, ZnodeStat):
            return "written", False
        return ("gone" if isinstance(result, NoNodeError) else repr(result)), False

    def discard(self, fence_node: str, paths: Sequence[str]) -> tuple[list[str], bool]:
        """Delete each node of ``paths`` (run-now requests naming no entry) under the fence.

        One transaction per node, so one refusal does not keep the others. Returns the paths
        that are gone now (deleted, or already gone) and whether the fence failed.
        """
        gone: list[str] = []
        for path in paths:
            transaction = self._client.transaction()
            transaction.check(fence_node, CONTENDER_NODE_VERSION)
            transaction.delete(path)
            fence_result, result = transaction.commit()
            if isinstance(fence_result, Exception) and not isinstance(fence_result, NOT_APPLIED):
                return gone, True
            if result is True or isinstance(result, NoNodeError):
                gone.append(path)
        return gone, False
