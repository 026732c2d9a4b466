"""An entry's run history, read back: the leader's records merged with the worker guard's.

:func:`read_history` reads, for one entry, its state ``entries/<entry>`` (the leader's records
``recent`` and the entry's incarnation), the children of its ``dedup/`` folder (the worker
guard's claims ``r<ordinal>`` and markers ``d<ordinal>`` of that incarnation), and the newest
``limit`` claims and markers (one multi-read), and its pause note ``paused/<entry>``: 4
requests. :func:`read_latest` gives the newest run of many entries (``status``) in 2 pipelined
requests per entry.

A run's outcome is, newest source first: a claim (``running``), a marker (``succeeded``,
``failed``, ``retrying``), else the leader's record (``sent``: published, no worker recorded it;
``skipped``: a policy or the misfire grace did not send it). Without the guard no worker writes
anything: :attr:`History.guarded` is False and every run reads ``sent``.

Guarantees: nothing read can make these functions raise other than the connection's errors
(``KazooException``, ``KazooTimeoutError``) and an ACL that denies a read (``NoAuthError``): a
node of garbage, of the wrong type, huge or deeply nested reads as no record. The history is the
current incarnation's (an entry pruned and added again starts a new history, as its ordinals
start over).

Not guaranteed: that the reads see one moment (a run may finish between the listing and its
read: it then reads as its claim's absence, i.e. as its marker or ``sent``); a history of runs
executed by workers whose ``beatleader_path`` differs from the beat's (their records live under
their own root).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from kazoo.exceptions import NoAuthError, NoNodeError

from beatleader.runs.records import (
    Outcome,
    RunRecord,
    leader_record,
    pause_reason,
    read_claim,
    read_marker,
    run_ordinals,
)
from beatleader.zk import layout
from beatleader.zk.multiread import list_children, read_nodes

__all__ = ["DEFAULT_LIMIT", "History", "Outcome", "read_history", "read_latest"]

#: Runs a history shows when no limit is given.
DEFAULT_LIMIT = 20


@dataclass(frozen=True)
class History:
    """The last runs of one entry, newest first."""

    name: str
    records: tuple[RunRecord, ...]
    #: Whether a worker guard ever recorded a run of this incarnation (else: the leader's view).
    guarded: bool
    #: Whether the entry has run state at all.
    exists: bool = True
    incarnation: str | None = None
    #: Why and by whom the entry is paused (its ``paused/`` note), None when it is not.
    paused: str | None = None

    @property
    def note(self) -> str | None:
        """What the reader should know about where the history comes from."""
        if not self.exists:
            return "no run state: the entry has not run (or its state was pruned)"
        if not self.guarded:
            return (
                "no worker recorded a run: outcomes need the worker guard "
                "(beatleader.dedup.install(app) in the workers); shown: what the leader sent"
            )
        return None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "exists": self.exists,
            "guarded": self.guarded,
            "incarnation": self.incarnation,
            "note": self.note,
            "paused": self.paused,
            "runs": [record.as_json() for record in self.records],
        }


def read_history(client: Any, root: str, name: str, limit: int = DEFAULT_LIMIT) -> History:
    """The last ``limit`` runs of entry ``name`` under ``root`` (see the module docstring)."""
    state = _state(client, root, name)
    if state is None:
        return History(name, (), guarded=False, exists=False)
    folder = f"{layout.dedup_path(root)}/{layout.dedup_folder(name, state.incarnation)}"
    children = list_children(client, folder)
    claims, markers = run_ordinals(children)
    sent = {r.ordinal for r in map(leader_record, state.recent) if r and r.ordinal is not None}
    # the newest ``limit`` runs the leader or a worker knows; those a worker recorded are read
    known = claims | markers
    newest = [o for o in sorted(sent | known, reverse=True)[:limit] if o in known]
    worker = _read_worker_records(client, folder, newest, claims)
    records = _merge(state.recent, worker)
    return History(
        name,
        tuple(records[:limit]),
        guarded=bool(children),
        incarnation=state.incarnation,
        paused=_pause(client, root, name),
    )


def _pause(client: Any, root: str, name: str) -> str | None:
    try:
        data, _stat = client.get(layout.paused_entry_path(root, name))
    except NoNodeError:
        return None
    return pause_reason(layout.json_object(bytes(data or b""))) or "paused"


def read_latest(
    client: Any, root: str, states: dict[str, layout.EntryState]
) -> dict[str, RunRecord]:
    """The newest run of each entry of ``states`` that a worker recorded (pipelined reads).

    An entry absent from the result has no worker record (unguarded, not run yet, or a folder
    whose ACL denies this reader).
    """
    base = layout.dedup_path(root)
    folders = {
        name: f"{base}/{layout.dedup_folder(name, state.incarnation)}"
        for name, state in states.items()
    }
    listings = {name: client.get_children_async(path) for name, path in folders.items()}
    newest: dict[str, tuple[str, int]] = {}
    for name, listing in listings.items():
        try:
            claims, markers = run_ordinals(listing.get())
        except (NoNodeError, NoAuthError):  # no run recorded; a folder this reader may not read
            continue
        if claims or markers:
            ordinal = max(claims | markers)
            newest[name] = ("r" if ordinal in claims else "d", ordinal)
    paths = [f"{folders[name]}/{kind}{ordinal:020d}" for name, (kind, ordinal) in newest.items()]
    found: dict[str, RunRecord] = {}
    for (name, (kind, ordinal)), result in zip(
        newest.items(), read_nodes(client, paths), strict=True
    ):
        record = _record(kind, ordinal, result)
        if record is not None:
            found[name] = record
    return found


def _state(client: Any, root: str, name: str) -> layout.EntryState | None:
    try:
        data, _stat = client.get(layout.entry_path(root, name))
    except NoNodeError:
        return None
    try:
        state, _problem = layout.EntryState.parse(bytes(data or b""))
    except Exception:  # a shape parse did not foresee: no state, as unreadable
        return None
    return state


def _read_worker_records(
    client: Any, folder: str, ordinals: list[int], claims: set[int]
) -> dict[int, RunRecord]:
    """Each ordinal's record: its claim when it has one (running), else its marker."""
    kinds = ["r" if ordinal in claims else "d" for ordinal in ordinals]
    paths = [
        f"{folder}/{kind}{ordinal:020d}" for kind, ordinal in zip(kinds, ordinals, strict=True)
    ]
    found: dict[int, RunRecord] = {}
    for kind, ordinal, result in zip(kinds, ordinals, read_nodes(client, paths), strict=True):
        record = _record(kind, ordinal, result)
        if record is not None:
            found[ordinal] = record
    return found


def _record(kind: str, ordinal: int, result: Any) -> RunRecord | None:
    """One claim's or marker's record; None when it is gone (finished, pruned) meanwhile, or
    this reader may not read it."""
    try:
        data, stat = result.get()
    except (NoNodeError, NoAuthError):
        return None
    value = layout.json_object(bytes(data or b""))
    if kind == "r":
        return read_claim(ordinal, value, stat.ctime / 1000.0)
    return read_marker(ordinal, value, stat.mtime / 1000.0)


def _merge(recent: tuple[Any, ...], worker: dict[int, RunRecord]) -> list[RunRecord]:
    """The leader's records and the workers', newest first."""
    leader = [record for record in map(leader_record, recent) if record is not None]
    due = {r.ordinal: r.due_at for r in leader if r.ordinal is not None}
    merged: list[RunRecord] = [r for r in leader if r.ordinal is None or r.ordinal not in worker]
    for ordinal, record in worker.items():
        merged.append(_with_due(record, due.get(ordinal)))
    return sorted(merged, key=_order, reverse=True)


def _with_due(record: RunRecord, due_at: float | None) -> RunRecord:
    return record if due_at is None else replace(record, due_at=due_at)


def _order(record: RunRecord) -> tuple[float, int]:
    """Newest first by time; a run's ordinal breaks ties (a skip sorts before the next send)."""
    when = record.due_at or record.started_at or record.finished_at or 0.0
    return (when, record.ordinal if record.ordinal is not None else -1)
