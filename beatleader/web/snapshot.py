"""What the dashboard shows, read in one go: the status, every entry as a row, an entry's history.

Everything is read through the operator readers, never by a ZooKeeper read of its own:
:func:`beatleader.ops.status.read_status` (leader, contenders, warnings, each entry's last run),
:meth:`beatleader.entries.api.EntryStore.list_entries` (static and runtime entries, paused or not,
pending run-now requests), :func:`beatleader.ops.status.read_schedules` (which entries a leader
publishes from a source such as django-celery-beat) and
:func:`beatleader.runs.history.read_history` (the strip of last runs, an entry's page).

Guarantees:

* :func:`read_snapshot` and :func:`read_entry` never raise for what ZooKeeper holds or for
  ZooKeeper being away: a disconnected client, a connection error, a timeout or a refused read
  (``NoAuthError``) is :attr:`Snapshot.problem`, one line for the page's banner; garbage nodes read
  as the readers read them (unreadable state, no record).
* The strip of runs is read for at most :attr:`SnapshotPolicy.max_strips` entries, and at most
  :attr:`SnapshotPolicy.max_rows` rows are kept (:attr:`Snapshot.hidden` counts the others), so a
  tree of many thousand entries costs a bounded number of requests per page.

Not guaranteed: one moment (the readers read node by node); a strip for an entry that has no run
state (it never ran).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from kazoo.exceptions import KazooException, NoAuthError
from kazoo.handlers.threading import KazooTimeoutError

from beatleader.entries.api import EntryStore
from beatleader.entries.listing import EntryInfo
from beatleader.ops.model import Entry, Status
from beatleader.ops.status import read_schedules, read_status
from beatleader.runs.history import History, read_history
from beatleader.runs.records import Outcome, RunRecord
from beatleader.zk.layout import SOURCES

__all__ = [
    "Row",
    "Snapshot",
    "SnapshotPolicy",
    "describe_error",
    "late_by",
    "read_entry",
    "read_snapshot",
]

ZK_ERRORS = (KazooException, KazooTimeoutError)


class SnapshotPolicy:
    """Bounds of one page's reads."""

    #: Runs in each entry's strip on the entries page.
    strip_runs = 12
    #: Entries whose strip is read (the others show none): each costs 4 requests.
    max_strips = 200
    #: Rows kept for the entries page.
    max_rows = 2000
    #: Runs shown on an entry's page.
    history_runs = 50
    #: Seconds after its due time a run may start and still not be drawn late.
    late_after = 5.0


@dataclass(frozen=True)
class Row:
    """One entry as the entries table shows it."""

    name: str
    #: "static", "runtime", a dynamic source such as "django", or "state" (run state only: no
    #: running schedule nor definition names it, e.g. removed from the code).
    source: str
    #: "enabled", "paused", "done", "invalid", "ignored" (``entries.listing``); "unknown".
    state: str
    schedule: str | None = None
    task: str | None = None
    next_due: str | None = None
    last_run_at: str | None = None
    total_run_count: int = 0
    last: RunRecord | None = None
    pending_runs: int = 0
    #: Backfill requests not done yet.
    pending_backfills: int = 0
    #: Why and by whom it is paused, when it is.
    paused: str | None = None
    changed_by: str | None = None
    changed_at: str | None = None
    problem: str | None = None
    #: Its last runs, newest first (``SnapshotPolicy.strip_runs``); None when not read.
    runs: tuple[RunRecord, ...] | None = None
    info: EntryInfo | None = None

    @property
    def running(self) -> bool:
        return self.last is not None and self.last.outcome is Outcome.RUNNING

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "state": self.state,
            "schedule": self.schedule,
            "task": self.task,
            "next_due": self.next_due,
            "last_run_at": self.last_run_at,
            "total_run_count": self.total_run_count,
            "last_outcome": self.last.outcome.value if self.last else None,
            "last_duration": self.last.duration if self.last else None,
            "running": self.running,
            "pending_runs": self.pending_runs,
            "pending_backfills": self.pending_backfills,
            "paused": self.paused,
            "changed_by": self.changed_by,
            "changed_at": self.changed_at,
            "problem": self.problem,
            "runs": None if self.runs is None else [r.as_json() for r in self.runs],
        }


@dataclass(frozen=True)
class Snapshot:
    """One page's data; :attr:`problem` set means ZooKeeper could not be read."""

    root: str
    hosts: str
    read_at: str
    status: Status | None = None
    rows: tuple[Row, ...] = ()
    #: Rows not kept (beyond ``SnapshotPolicy.max_rows``).
    hidden: int = 0
    problem: str | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def reachable(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.root,
            "zk_hosts": self.hosts,
            "read_at": self.read_at,
            "reachable": self.reachable,
            "problem": self.problem,
            "status": self.status.as_dict() if self.status else None,
            "entries": [row.as_dict() for row in self.rows],
            "hidden": self.hidden,
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def describe_error(exc: BaseException, hosts: str, root: str) -> str:
    """One line for the banner."""
    if isinstance(exc, NoAuthError):
        return (
            f"ZooKeeper at {hosts} refused a read of {root} (NoAuthError): start the dashboard "
            "with the identity that owns the tree (--zk-auth-file)"
        )
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"ZooKeeper unreachable at {hosts}: {name}{': ' + text if text else ''}"


def _unreachable(client: Any, hosts: str) -> str | None:
    if getattr(client, "connected", False):
        return None
    return f"ZooKeeper unreachable at {hosts}: not connected (reconnecting)"


def read_snapshot(
    client: Any, root: str, hosts: str, app: Any = None, strips: bool = True
) -> Snapshot:
    """The status and every entry's row (see the module docstring); ``strips``: read each
    row's last runs too (the entries page; the overview and an entry's page need none)."""
    problem = _unreachable(client, hosts)
    if problem is not None:
        return Snapshot(root, hosts, _now(), problem=problem)
    try:
        status = read_status(client, root)
        if not status.exists:
            return Snapshot(root, hosts, _now(), status=status)
        infos = EntryStore(client, root, app).list_entries()
        sources = _sources(client, root, status)
        rows = _rows(status, infos, sources)
        hidden = max(0, len(rows) - SnapshotPolicy.max_rows)
        rows = rows[: SnapshotPolicy.max_rows]
        if strips:
            rows = _with_strips(client, root, rows)
    except ZK_ERRORS as exc:
        return Snapshot(root, hosts, _now(), problem=describe_error(exc, hosts, root))
    return Snapshot(root, hosts, _now(), status=status, rows=tuple(rows), hidden=hidden)


def read_entry(
    client: Any, root: str, hosts: str, name: str, app: Any = None
) -> tuple[Snapshot, Row | None, History | None]:
    """The snapshot, ``name``'s row (None: no such entry) and its history."""
    snapshot = read_snapshot(client, root, hosts, app, strips=False)
    row = next((r for r in snapshot.rows if r.name == name and r.state != "ignored"), None)
    row = row or next((r for r in snapshot.rows if r.name == name), None)
    if row is None or not snapshot.reachable:
        return snapshot, row, None
    try:
        history = read_history(client, root, name, SnapshotPolicy.history_runs)
    except ZK_ERRORS as exc:
        problem = describe_error(exc, hosts, root)
        return Snapshot(root, hosts, _now(), problem=problem), row, None
    return snapshot, row, history


def _sources(client: Any, root: str, status: Status) -> dict[str, str]:
    """Entry name -> the dynamic source a leader describes it from (``sources/<source>``)."""
    found: dict[str, str] = {}
    for key, plans in read_schedules(client, root, status.contenders).items():
        if key.startswith(f"{SOURCES}/") and plans:
            for name in plans:
                found.setdefault(name, key.split("/", 1)[1])
    return found


def _rows(status: Status, infos: list[EntryInfo], sources: dict[str, str]) -> list[Row]:
    by_name: dict[str, Entry] = {e.name: e for e in status.entries}
    rows = []
    listed = set()
    for info in infos:
        listed.add(info.name)
        entry = by_name.get(info.name)
        source = sources.get(info.name, info.source) if info.source == "static" else info.source
        rows.append(
            Row(
                name=info.name,
                source=source,
                state=info.state,
                schedule=info.schedule or (entry.plan.schedule if entry and entry.plan else None),
                task=info.task,
                next_due=info.next_due,
                last_run_at=info.last_run_at,
                total_run_count=info.total_run_count,
                last=entry.last if entry else None,
                pending_runs=info.pending_runs,
                pending_backfills=info.pending_backfills,
                paused=info.pause_note or (entry.paused if entry else None),
                changed_by=info.changed_by,
                changed_at=info.changed_at,
                problem=info.problem,
                info=info,
            )
        )
    for entry in status.entries:
        if entry.name in listed:
            continue
        state = entry.state
        rows.append(
            Row(
                name=entry.name,
                source="state",
                state="unknown" if entry.unreadable else "not scheduled",
                schedule=entry.plan.schedule if entry.plan else None,
                task=entry.plan.task if entry.plan else None,
                next_due=entry.next_due,
                last_run_at=state.last_run_at if state else None,
                total_run_count=state.total_run_count if state else 0,
                last=entry.last,
                paused=entry.paused,
                problem="unreadable run state" if entry.unreadable else None,
            )
        )
    return sorted(rows, key=lambda r: (r.name, r.source))


def _with_strips(client: Any, root: str, rows: list[Row]) -> list[Row]:
    result = []
    for number, row in enumerate(rows):
        if number >= SnapshotPolicy.max_strips or row.state == "ignored":
            result.append(row)
            continue
        history = read_history(client, root, row.name, SnapshotPolicy.strip_runs)
        result.append(replace(row, runs=history.records if history.exists else ()))
    return result


def late_by(record: RunRecord) -> float | None:
    """Seconds the run started after its due time, when both are known."""
    if record.started_at is None or record.due_at is None:
        return None
    return record.started_at - record.due_at
