"""Shared schedule state in ZooKeeper: loading it on takeover, and the fenced, batched commit.

Every entry has one persistent znode ``<root>/entries/<quoted name>`` holding a JSON
:class:`~beatleader.layout.EntryState`. Only a leader writes it, and only through
:meth:`StateStore.commit`, which sends one ZooKeeper transaction (multi-op) per batch::

    check(own contender node, version=0)
    set_data(entry, new state, version=expected)    # or create(entry) for a first run
    ...                                             # every entry due in this tick

Guarantees:

* A batch commits only while this instance's session is alive and its contender node exists
  (a paused or partitioned ex-leader's node is gone, so its batch fails), and only if nobody
  wrote any of its entries since this instance read them.
* A batch commits whole or not at all. Batches larger than ``max_ops_per_commit`` are split;
  each split carries its own check, so a failure stops the batches after it.
* Failures are returned as values (:class:`CommitOutcome`), never raised, except for
  connection errors which callers treat as "not committed".

Not guaranteed: that a committed run is published. The scheduler publishes after the commit; a
crash between the two loses that run (at most once, never twice).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    NodeExistsError,
    NoNodeError,
    RolledBackError,
    RuntimeInconsistency,
)
from kazoo.protocol.states import ZnodeStat

from beatleader import layout
from beatleader.layout import EntryState

#: What a failed transaction answers for the ops that did not fail themselves (before and after).
NOT_APPLIED = (RolledBackError, RuntimeInconsistency)

#: Contender nodes are never rewritten, so their data version stays 0 for their whole life.
CONTENDER_NODE_VERSION = 0


@dataclass(frozen=True)
class StoredState:
    """An entry's state as read, with the znode version a commit must expect."""

    state: EntryState | None
    version: int


@dataclass(frozen=True)
class Write:
    """One entry's new state; ``expected_version`` None means the znode does not exist yet."""

    name: str
    state: EntryState
    expected_version: int | None


@dataclass
class CommitOutcome:
    """What a :meth:`StateStore.commit` achieved."""

    #: entry name -> new znode version, for every write that committed.
    committed: dict[str, int] = field(default_factory=dict)
    #: The fence failed: the own contender node is gone (or was never there).
    lost_leadership: bool = False
    #: Entries somebody else wrote since they were read (version conflict).
    conflicts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.lost_leadership and not self.conflicts


class StateStore:
    """Reads and fence-writes the entry state znodes under ``root``."""

    #: Largest number of entry writes in one ZooKeeper transaction (far below jute.maxbuffer).
    max_ops_per_commit = 250

    def __init__(self, client: KazooClient, root: str) -> None:
        self._client = client
        self._root = root
        self._entries_path = layout.entries_path(root)

    def load(self) -> dict[str, StoredState]:
        """Every entry's stored state, by entry name (reads are pipelined, not sequential)."""
        self._client.ensure_path(self._entries_path)
        # A server of an ensemble may lag behind; sync makes it catch up with the ZooKeeper leader
        # so a new leader does not start from stale state (the fence would refuse it anyway).
        self._client.sync(self._entries_path)
        children = self._client.get_children(self._entries_path)
        pending = [
            (child, self._client.get_async(f"{self._entries_path}/{child}")) for child in children
        ]
        states: dict[str, StoredState] = {}
        for child, result in pending:
            try:
                data, stat = result.get()
            except NoNodeError:
                continue
            name = layout.unquote_entry_name(child)
            states[name] = StoredState(EntryState.decode(data), stat.version)
        return states

    def publish_schedule(self, fingerprint: str, entry_names: list[str]) -> None:
        """Record which entries the schedule ``fingerprint`` holds, for ``beatleader status``.

        The node is content-addressed (one per fingerprint, never rewritten), so a follower
        writing it cannot disturb anything: it is not schedule state.
        """
        path = layout.schedule_path(self._root, fingerprint)
        with contextlib.suppress(NodeExistsError):
            self._client.create(path, json.dumps(entry_names).encode(), makepath=True)

    def commit(self, fence_node: str, writes: Sequence[Write]) -> CommitOutcome:
        """Write ``writes`` under the fence of ``fence_node``; see the module docstring."""
        outcome = CommitOutcome()
        if any(write.expected_version is None for write in writes):
            self._client.ensure_path(self._entries_path)  # first run of some entry
        size = self.max_ops_per_commit
        for start in range(0, len(writes), size):
            self._commit_batch(fence_node, writes[start : start + size], outcome)
            if not outcome.ok:
                break
        return outcome

    def _commit_batch(
        self, fence_node: str, batch: Sequence[Write], outcome: CommitOutcome
    ) -> None:
        transaction = self._client.transaction()
        transaction.check(fence_node, CONTENDER_NODE_VERSION)
        for write in batch:
            path = layout.entry_path(self._root, write.name)
            if write.expected_version is None:
                transaction.create(path, write.state.encode())
            else:
                transaction.set_data(path, write.state.encode(), version=write.expected_version)
        fence_result, *results = transaction.commit()
        if isinstance(fence_result, Exception) and not isinstance(fence_result, NOT_APPLIED):
            outcome.lost_leadership = True
            return
        for write, result in zip(batch, results, strict=True):
            if isinstance(result, ZnodeStat):
                outcome.committed[write.name] = result.version
            elif isinstance(result, str):  # create returns the path; a new znode is version 0
                outcome.committed[write.name] = 0
            elif isinstance(result, BadVersionError | NodeExistsError | NoNodeError):
                outcome.conflicts.append(write.name)
            elif not isinstance(result, NOT_APPLIED):
                raise result
