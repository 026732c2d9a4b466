"""What outlives a run's claim: the ``d`` markers, the folder's floor, their JSON, and pruning.

:class:`MarkerFolder` is the base of :class:`beatleader.worker.claims.ClaimStore` (which claims runs
and finishes them); it owns the persistent half of an entry's claims folder (``claims.py`` shows the
layout): the folder node, JSON ``{"floor": F}``, and its ``d<ordinal>`` markers, JSON ``{"state",
"attempt", "task_id"}``. :class:`Outcome`, :class:`RunKey` and the pruning tunables
(:class:`MarkerPolicy`, the base of ``ClaimPolicy``) live here; ``claims.py`` re-exports them.

Guarantees:

* **Bounded**: every :attr:`MarkerPolicy.prune_every`-th ordinal, the writer of a ``d`` marker
  deletes the markers of that entry older than the retention (ZooKeeper's own ``ctime``, so no
  worker clock is trusted), except the newest ``keep`` (``beatleader_history_size``: the entry's
  run history), and raises the folder's floor to the highest ordinal it deleted. An entry keeps
  about ``max(retention / interval, keep) + prune_every`` markers.
* **Floor first**: the floor is raised before the markers under it are deleted, so a run whose
  marker is gone already counts as expired; the floor only rises (a write at the version read,
  read again after a conflict).
* **Unreadable means done**: data that is not a JSON object reads as ``{}``: such a marker lets
  no attempt run again (only a ``retrying`` marker lets a later attempt in), such a floor is 0.

Not guaranteed:

* A run at or below the floor (older than the retention) is never executed again, even if it
  never ran: set the retention longer than any redelivery delay of the broker (Redis
  ``visibility_timeout``, SQS visibility) and any queue backlog.
* Folders of entries removed from the schedule are not deleted (at most the markers of one
  retention each).
* Pruning is not one transaction: a worker that dies after raising the floor leaves the markers
  under it until the entry's next pruning; two workers pruning one folder at once is harmless.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from beatleader.zk import layout


class Outcome(Enum):
    """How an execution ended, as recorded in its ``d`` marker (or not at all)."""

    DONE = "done"
    FAILED = "failed"
    RETRYING = "retrying"
    RELEASED = "released"  # no marker: the message comes back (requeue, worker shutdown)


@dataclass(frozen=True)
class RunKey:
    """One run of one entry: the claim's folder and ordinal."""

    folder: str
    ordinal: int
    entry: str
    task_id: str

    def __str__(self) -> str:
        return f"task {self.task_id} (entry {self.entry!r} run {self.ordinal})"


class MarkerPolicy:
    """Tunables of the markers and of every request; ``ClaimPolicy`` adds the claims' own."""

    #: Markers are pruned when a run whose ordinal is a multiple of this is finished.
    prune_every = 32
    #: Markers whose age is checked per round trip when pruning.
    prune_batch = 200
    #: Seconds a request may take (a request queued while disconnected waits for the
    #: reconnection otherwise); past it: ``KazooTimeoutError``, the request may still execute.
    request_timeout = 10.0


class MarkerFolder:
    """The folders and markers of one worker process's claim store (see the module docstring)."""

    client: KazooClient
    zk: Any
    root: str
    retention: float
    keep: int
    policy: type[MarkerPolicy]
    _folders: set[str]

    def folder_path(self, key: RunKey) -> str:
        return f"{layout.dedup_path(self.root)}/{key.folder}"

    def _marker_path(self, key: RunKey) -> str:
        return f"{self.folder_path(key)}/d{key.ordinal:020d}"

    # -- pruning ----------------------------------------------------------------------------

    def prune(self, key: RunKey) -> int:
        """Delete ``key``'s entry's markers older than the retention; return how many."""
        folder = self.folder_path(key)
        now_stat = self.zk.exists(self._marker_path(key))
        if now_stat is None:
            return 0
        horizon_ms = now_stat.ctime - int(self.retention * 1000)
        markers = sorted(
            int(name[1:])
            for name in self.zk.get_children(folder)
            if name.startswith("d") and name[1:].isdigit()
        )
        if self.keep > 0:
            markers = markers[: -self.keep]  # the newest are the entry's run history: kept
        deleted: list[int] = []
        for start in range(0, len(markers), self.policy.prune_batch):
            batch = markers[start : start + self.policy.prune_batch]
            old = self._older_than(folder, batch, horizon_ms)
            if old:
                # the floor first: a run whose marker is gone must already count as expired
                self._raise_floor(key, max(old))
                self._delete_markers(folder, old)
                deleted.extend(old)
            if len(old) < len(batch):
                break  # markers are created in about ordinal order: the rest are younger
        return len(deleted)

    def _older_than(self, folder: str, ordinals: list[int], horizon_ms: int) -> list[int]:
        asyncs = [(n, self.client.exists_async(f"{folder}/d{n:020d}")) for n in ordinals]
        old = []
        for ordinal, result in asyncs:
            stat = result.get(timeout=self.policy.request_timeout)
            if stat is not None and stat.ctime < horizon_ms:
                old.append(ordinal)
        return old

    def _delete_markers(self, folder: str, ordinals: list[int]) -> None:
        pending = [self.client.delete_async(f"{folder}/d{n:020d}") for n in ordinals]
        for result in pending:
            with contextlib.suppress(NoNodeError):  # another worker pruned it
                result.get(timeout=self.policy.request_timeout)

    def _raise_floor(self, key: RunKey, ordinal: int) -> None:
        path = self.folder_path(key)
        while True:
            data, stat = self.zk.get(path)
            if floor_of(data) >= ordinal:
                return
            try:
                self.zk.set(path, encode({"floor": ordinal}), stat.version)
                return
            except BadVersionError:
                continue

    def _floor(self, key: RunKey) -> int:
        data, _ = self.zk.get(self.folder_path(key))
        return floor_of(data)

    # -- folder and markers -----------------------------------------------------------------

    def _ensure_folder(self, key: RunKey) -> None:
        if key.folder in self._folders:
            return
        with contextlib.suppress(NodeExistsError):
            self.zk.create(self.folder_path(key), encode({"floor": 0}), makepath=True)
        self._folders.add(key.folder)

    def _marker(self, key: RunKey) -> dict[str, Any] | None:
        try:
            data, _ = self.zk.get(self._marker_path(key))
        except NoNodeError:
            return None
        return decode(data)

    def markers(self, key: RunKey) -> list[int]:
        """The ordinals of ``key``'s entry that have a ``d`` marker (for tests and status)."""
        return sorted(
            int(name[1:])
            for name in self.zk.get_children(self.folder_path(key))
            if name.startswith("d") and name[1:].isdigit()
        )


def allows(marker: dict[str, Any], attempt: int) -> bool:
    """Whether a delivery with ``attempt`` may run after ``marker`` (only a later retry may)."""
    if marker.get("state") != Outcome.RETRYING.value:
        return False
    previous = marker.get("attempt")
    return isinstance(previous, int) and attempt > previous


def int_or_zero(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def floor_of(data: bytes) -> int:
    return int_or_zero(decode(data).get("floor"))


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def decode(data: bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(data.decode()) if data else None
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: deep nesting
        return {}
    return value if isinstance(value, dict) else {}
