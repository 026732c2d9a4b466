"""List every entry of an app: static (``beat_schedule``) and runtime (``definitions/``).

:func:`read_entries` is what ``beatleader entry list`` prints and
:func:`beatleader.entries.list_entries` returns: one :class:`EntryInfo` per name, with where it
comes from, its state (enabled, paused, done, invalid, ignored), its schedule as text, its task,
its last run and its next due time (computed like ``status`` does, ``schedules.next_due``).

Static names are those of the app's ``beat_schedule`` (when an app is given) and those published
by the running instances (``schedules/<fingerprint>`` of each contender: their static schedule).
A runtime definition with a static name is listed ``ignored``: the leader runs the static entry.

Guarantees: only reads; any data is survived: a definition node that is not a valid definition
is listed with state ``invalid`` and the reason in ``problem``, unreadable run state reads as
never run, request nodes of foreign shape are not counted; nodes vanishing while it reads are
skipped. Reads go through ``multiread`` (500 nodes a request on ZooKeeper 3.6+), so a few
thousand entries take one round trip per kind of node, not one per entry.

Not guaranteed: a consistent snapshot (nodes are read one kind after the other); a next due time
for an interval entry that never ran (the leader counts from its own start), or for solar and
custom schedules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from kazoo.exceptions import NoNodeError

from beatleader.ops.runtimeplans import runtime_plan
from beatleader.ops.status import read_election, read_schedules
from beatleader.runs.records import pause_reason
from beatleader.schedules.definitions import Definition
from beatleader.schedules.describe import (
    PlannedEntry,
    describe_entry,
    is_done,
    next_due,
    parse_time,
)
from beatleader.zk import layout
from beatleader.zk.layout import EntryState
from beatleader.zk.multiread import list_children, read_children, read_nodes

STATIC = "static"
RUNTIME = "runtime"


@dataclass(frozen=True)
class EntryInfo:
    """One entry as ``entry list`` shows it."""

    name: str
    source: str  # STATIC or RUNTIME
    #: "enabled", "paused", "done" (a one-off that ran), "invalid" (unreadable definition),
    #: "ignored" (a runtime definition whose name a static entry has: the static one runs).
    state: str
    task: str | None = None
    schedule: str | None = None
    next_due: str | None = None
    last_run_at: str | None = None
    total_run_count: int = 0
    #: Run-now requests not consumed yet.
    pending_runs: int = 0
    changed_by: str | None = None
    changed_at: str | None = None
    problem: str | None = None
    definition: Definition | None = None
    #: Why and by whom a paused entry was paused (its ``paused/`` note), when it says.
    pause_note: str | None = None
    #: Backfill requests not done yet (``entry backfill``).
    pending_backfills: int = 0

    @property
    def enabled(self) -> bool:
        return self.state == "enabled"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "state": self.state,
            "enabled": self.enabled,
            "task": self.task,
            "schedule": self.schedule,
            "next_due": self.next_due,
            "last_run_at": self.last_run_at,
            "total_run_count": self.total_run_count,
            "pending_runs": self.pending_runs,
            "pending_backfills": self.pending_backfills,
            "changed_by": self.changed_by,
            "changed_at": self.changed_at,
            "problem": self.problem,
            "definition": self.definition.as_json() if self.definition else None,
            "pause_note": self.pause_note,
        }


def published_plans(client: Any, root: str) -> dict[str, PlannedEntry]:
    """Every entry the running instances published, by name (first readable plan wins)."""
    contenders, _ignored = read_election(client, root)
    plans: dict[str, PlannedEntry] = {}
    schedules = read_schedules(client, root, contenders)
    for fingerprint in sorted(schedules):
        for name, plan in (schedules[fingerprint] or {}).items():
            known = plans.get(name)
            if known is None or known.schedule is None:
                plans[name] = plan
    return plans


def published_names(client: Any, root: str) -> frozenset[str]:
    return frozenset(published_plans(client, root))


def read_entries(
    client: Any, root: str, beat_schedule: Mapping[str, Any], app: Any = None
) -> list[EntryInfo]:
    """Every static and runtime entry under ``root``, sorted by name (see the module doc)."""
    definitions = _read_children(client, layout.definitions_path(root))
    published = published_plans(client, root)
    static = dict(published)
    for name, spec in beat_schedule.items():
        static[name] = _app_plan(app, name, spec) or static.get(name) or PlannedEntry(name)
    notes = _pause_notes(client, root)
    paused = set(notes)
    pending = _pending(client, root)
    names = sorted(static.keys() | definitions.keys())
    states = _read_states(client, root, names)
    now = datetime.now(timezone.utc)
    found = []
    for name in sorted(static):
        found.append(
            _static(name, static[name], states.get(name), name in paused, pending[name], now)
        )
    for name in sorted(definitions):
        info = _runtime(name, definitions[name], states.get(name), pending[name], now, app)
        if name in static:
            info = _ignored(info)
        found.append(info)
    found = [replace(i, pause_note=notes.get(i.name)) if i.state == "paused" else i for i in found]
    backfills = _pending(client, root, layout.backfills_path(root))
    found = [replace(i, pending_backfills=backfills[i.name]) if i.name in backfills else i
             for i in found]  # fmt: skip
    return sorted(found, key=lambda i: (i.name, i.source))


def _pause_notes(client: Any, root: str) -> dict[str, str | None]:
    """Each ``paused/`` marker's entry -> why and by whom it was paused, None when unreadable."""
    notes: dict[str, str | None] = {}
    for name, data in _read_children(client, layout.paused_path(root)).items():
        notes[name] = pause_reason(layout.json_object(data))
    return notes


def _static(
    name: str,
    plan: PlannedEntry,
    state: EntryState | None,
    paused: bool,
    pending: int,
    now: datetime,
) -> EntryInfo:
    last = state.last_run_at if state else None
    count = state.total_run_count if state else 0
    done = is_done(plan, last, count)
    due = None if paused or done else next_due(plan, last, now, count)
    return EntryInfo(
        name,
        STATIC,
        "paused" if paused else "done" if done else "enabled",
        plan.task,
        plan.schedule,
        _iso(due),
        last,
        state.total_run_count if state else 0,
        pending,
    )


def _runtime(
    name: str,
    data: bytes,
    state: EntryState | None,
    pending: int,
    now: datetime,
    app: Any,
) -> EntryInfo:
    last = state.last_run_at if state else None
    count = state.total_run_count if state else 0
    definition, problem = Definition.parse(data)
    if definition is None:
        return EntryInfo(name, RUNTIME, "invalid", None, None, None, last, count, pending, None,
                         None, problem)  # fmt: skip
    plan = runtime_plan(name, definition)
    done = _done(definition, last) or is_done(plan, last, count)
    due = (
        None
        if done or not definition.enabled
        else _next_due(name, definition, last, now, app, count)
    )
    return EntryInfo(
        name,
        RUNTIME,
        "done" if done else "enabled" if definition.enabled else "paused",
        definition.task,
        definition.describe(),
        _iso(due),
        last,
        count,
        pending,
        definition.changed_by,
        definition.changed_at,
        None,
        definition,
    )


def _ignored(info: EntryInfo) -> EntryInfo:
    return EntryInfo(
        info.name,
        RUNTIME,
        "ignored",
        info.task,
        info.schedule,
        None,
        info.last_run_at,
        info.total_run_count,
        info.pending_runs,
        info.changed_by,
        info.changed_at,
        "a static beat_schedule entry has this name: the static entry runs",
        info.definition,
    )


def _done(definition: Definition, last_run_at: str | None) -> bool:
    moment = definition.at()
    last = parse_time(last_run_at)
    return moment is not None and last is not None and last >= moment


def _next_due(
    name: str,
    definition: Definition,
    last_run_at: str | None,
    now: datetime,
    app: Any,
    count: int = 0,
) -> datetime | None:
    sched = definition.schedule
    policy = runtime_plan(name, definition).policy
    if "every" in sched:
        plan = PlannedEntry(name, every=sched["every"], policy=policy)
        return next_due(plan, last_run_at, now, count)
    if "crontab" in sched:
        zone = sched.get("timezone") or (str(app.timezone) if app is not None else "UTC")
        plan = PlannedEntry(
            name, crontab=sched["crontab"], timezone=zone,
            cron_rules=True, policy=policy,
        )  # fmt: skip
        return next_due(plan, last_run_at, now, count)
    return definition.at()


def _app_plan(app: Any, name: str, spec: Any) -> PlannedEntry | None:
    """The plan of the app's own ``beat_schedule`` entry (None when celery refuses it)."""
    if app is None or not isinstance(spec, Mapping):
        return None
    from celery import beat

    try:
        return describe_entry(beat.ScheduleEntry(**dict(spec, name=name, app=app)))
    except Exception:  # a malformed beat_schedule entry: beat itself will say so
        return None


def _pending(client: Any, root: str, folder: str | None = None) -> Counter[str]:
    """Entry name -> its requests in ``folder`` (default: the run-now requests)."""
    path = folder or layout.requests_path(root)
    names = (layout.request_entry_name(c) for c in list_children(client, path))
    return Counter(n for n in names if n is not None)


def _read_states(client: Any, root: str, names: list[str]) -> dict[str, EntryState]:
    paths = [layout.entry_path(root, n) for n in names]
    calls = zip(names, read_nodes(client, paths), strict=True)
    states = {}
    for name, call in calls:
        data = _result(call)
        state = EntryState.parse(data)[0] if data is not None else None
        if state is not None:
            states[name] = state
    return states


def _read_children(client: Any, path: str) -> dict[str, bytes]:
    """Unquoted child name -> data (``multiread``); children vanishing meanwhile are skipped."""
    found = read_children(client, path)
    return {layout.unquote_entry_name(quoted): data for quoted, (data, _) in found.items()}


def _result(call: Any) -> bytes | None:
    try:
        data, _stat = call.get()
    except NoNodeError:
        return None
    return bytes(data or b"")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None
