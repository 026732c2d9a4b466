"""Read what beatleader keeps in ZooKeeper, for operators; move leadership by hand.

Every function takes a started ``KazooClient`` and an app's root path and returns plain
dataclasses (with ``as_dict()`` for JSON); nothing here prints, parses options or reads settings,
so the CLI, the scheduler's embedded status and the tests can all reuse it. The dataclasses
(``Contender``, ``Entry``, ``Status``, ...) live in :mod:`beatleader.ops.model` and are
re-exported here: import them from this module.

Guarantees:

* :func:`read_status` only reads. Nodes that vanish while it reads (an instance stopping, a
  deleted tree) are skipped, never an error; a missing root reads as "no contender, no entry".
* Any data is survived: unreadable contender or entry data (garbage bytes, non-UTF-8, JSON of the
  wrong shape or types) reads as ``info``/``state`` None and is named in ``warnings``.
* Contenders are exactly the election's (``contenders.py``): well-formed, ephemeral nodes in
  (sequence, name) order; any other child of ``election/`` is listed in ``ignored`` with the
  reason, and warned about. ``since`` is the contender node's creation time (ctime), in UTC.
* Runtime entries (``definitions/``) are listed with the static ones, their schedule prefixed
  ``runtime`` (:mod:`beatleader.ops.runtimeplans`); a static entry's plan wins a shared name.
* :meth:`Status.leader_problem` is None only for a leader whose node holds readable, unrewritten
  ContenderInfo: what ``status --check`` requires (:mod:`beatleader.ops.model`).
* :func:`resign_leader` deletes only the well-formed, ephemeral node that led when it looked; it
  never touches entry state. The resigned instance queues again at the back by itself.
* Kazoo errors (connection loss, timeouts, permissions) propagate to the caller unchanged.

Not guaranteed: a consistent snapshot. Nodes are read one by one, so a status taken while the
queue changes can mix two moments.
"""

from __future__ import annotations

import dataclasses
import posixpath
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from datetime import datetime, timezone
from typing import Any

from kazoo.exceptions import BadArgumentsError, NoNodeError
from kazoo.protocol.states import ZnodeStat

from beatleader.election.contenders import contender_sequence, ignored_reason, sorted_contenders
from beatleader.ops.diagnose import status_warnings
from beatleader.ops.model import Contender, Entry, IgnoredNode, ResignResult, Status
from beatleader.ops.runtimeplans import RUNTIME_SCHEDULE, read_runtime_plans
from beatleader.runs.history import read_latest
from beatleader.runs.records import pause_reason
from beatleader.schedules.describe import PlannedEntry, decode_schedule, is_done, next_due
from beatleader.zk.clocknode import clock_warnings, read_clock
from beatleader.zk.layout import (
    SOURCES,
    ContenderInfo,
    EntryState,
    election_path,
    entries_path,
    json_object,
    paused_path,
    schedule_path,
    source_path,
    unquote_entry_name,
)
from beatleader.zk.multiread import read_children

__all__ = [
    "POLL_INTERVAL",
    "Contender",
    "Entry",
    "IgnoredNode",
    "ResignResult",
    "Status",
    "read_contenders",
    "read_election",
    "read_entries",
    "read_leader",
    "read_schedules",
    "read_status",
    "resign_leader",
    "scheduled_names",
    "sibling_paths",
    "wait_for_leader",
]

#: How often the waiting functions look at the election queue again, in seconds.
POLL_INTERVAL = 0.05


def read_status(client: Any, root: str) -> Status:
    """Read contenders, entry state and published schedules under ``root``."""
    if client.exists(root) is None:
        return Status(root, (), (), exists=False, warnings=(f"{root} does not exist",))
    contenders, ignored = read_election(client, root)
    schedules = read_schedules(client, root, contenders)
    runtime = read_runtime_plans(client, root)
    if runtime:  # after every fingerprint (sorted): a static entry's plan wins its name
        schedules[RUNTIME_SCHEDULE] = runtime
    scheduled = scheduled_names(contenders, schedules)
    entries = _with_runs(
        client, root, _with_plans(read_entries(client, root), schedules, scheduled)
    )
    entries, paused_itself = _with_pauses(client, root, entries)
    warnings = [f"ignoring election node {i.node!r}: {i.reason}" for i in ignored]
    warnings += status_warnings(root, contenders, entries, scheduled)
    warnings += [f"entry {name!r} paused itself: {why}" for name, why in paused_itself]
    clock = read_clock(client, root)
    warnings += clock_warnings(clock)
    return Status(
        root,
        tuple(contenders),
        tuple(entries),
        scheduled,
        tuple(warnings),
        tuple(ignored),
        clock=clock,
    )


def _with_plans(
    stored: list[Entry],
    schedules: dict[str, dict[str, PlannedEntry] | None],
    scheduled: frozenset[str] | None,
) -> list[Entry]:
    """``stored`` plus the never-run scheduled entries, each with its plan and next due time."""
    plans: dict[str, PlannedEntry] = {}
    for fingerprint in sorted(schedules):  # the same order on every run
        for name, plan in (schedules[fingerprint] or {}).items():
            known = plans.get(name)
            if known is None or known.schedule is None:
                plans[name] = plan
    by_name = {e.name: e for e in stored}
    for name in plans.keys() - by_name.keys():
        by_name[name] = Entry(name, None, stored=False)
    now = datetime.now(timezone.utc)
    result = []
    for name in sorted(by_name):
        entry, planned = by_name[name], plans.get(name)
        last = entry.state.last_run_at if entry.state else None
        count = entry.state.total_run_count if entry.state else 0
        due = next_due(planned, last, now, count) if planned else None
        result.append(
            dataclasses.replace(
                entry,
                plan=planned,
                next_due=due.isoformat(timespec="seconds") if due else None,
                done=is_done(planned, last, count),
                scheduled=None if scheduled is None else name in scheduled,
            )
        )
    return result


def _with_pauses(
    client: Any, root: str, entries: list[Entry]
) -> tuple[list[Entry], list[tuple[str, str]]]:
    """``entries`` with their pause notes (``paused/``), and the entries that paused themselves
    (``pause_after_failures``) with why."""
    notes = {
        unquote_entry_name(quoted): json_object(bytes(data or b""))
        for quoted, (data, _stat) in read_children(client, paused_path(root)).items()
    }
    found = [
        dataclasses.replace(e, paused=pause_reason(notes[e.name]) or "paused")
        if e.name in notes
        else e
        for e in entries
    ]
    itself = [
        (n, str(pause_reason(note))) for n, note in sorted(notes.items()) if note.get("reason")
    ]
    return found, itself


def _with_runs(client: Any, root: str, entries: list[Entry]) -> list[Entry]:
    """``entries``, each with its newest run a worker recorded (``runs.history.read_latest``)."""
    states = {e.name: e.state for e in entries if e.state is not None}
    latest = read_latest(client, root, states)
    return [dataclasses.replace(e, last=latest.get(e.name)) for e in entries]


def sibling_paths(client: Any, root: str) -> tuple[str, list[str]] | None:
    """(parent, its children as full paths) for "did you mean"; None when the parent is gone."""
    parent = posixpath.dirname(root.rstrip("/")) or "/"
    try:
        children = client.get_children(parent)
    except NoNodeError:
        return None
    base = parent.rstrip("/")
    return parent, sorted(f"{base}/{c}" for c in children if c != "zookeeper" or base)


def read_contenders(client: Any, root: str) -> list[Contender]:
    """Every contender in queue order; the first one leads."""
    return read_election(client, root)[0]


def read_election(client: Any, root: str) -> tuple[list[Contender], list[IgnoredNode]]:
    """The contenders in queue order, and the children of ``election/`` that are ignored."""
    found: dict[str, Contender] = {}
    ignored = []
    nodes = read_children(client, election_path(root))  # a few requests however many there are
    for name in sorted(nodes):
        data, stat = nodes[name]
        reason = ignored_reason(name, int(stat.ephemeralOwner))
        if reason is not None:
            ignored.append(IgnoredNode(name, reason))
            continue
        info = ContenderInfo.decode(data)
        since = _iso(int(stat.ctime))
        found[name] = Contender(name, contender_sequence(name), since, info, int(stat.version))
    return [found[name] for name in sorted_contenders(found)], ignored


def read_leader(client: Any, root: str) -> Contender | None:
    """The contender that leads now, or None."""
    contenders = read_contenders(client, root)
    return contenders[0] if contenders else None


def read_entries(client: Any, root: str) -> list[Entry]:
    """The state of every entry that has state, sorted by entry name."""
    found = [
        Entry(unquote_entry_name(quoted), _decode_state(data))
        for quoted, (data, _stat) in read_children(client, entries_path(root)).items()
    ]
    return sorted(found, key=lambda e: e.name)


def _decode_state(data: bytes) -> EntryState | None:
    """``EntryState.decode``, and None should it raise on some data it did not foresee."""
    try:
        return EntryState.decode(data)
    except Exception:
        return None


def read_schedules(
    client: Any, root: str, contenders: Iterable[Contender]
) -> dict[str, dict[str, PlannedEntry] | None]:
    """fingerprint -> published entries by name (None when absent or unreadable).

    The dynamic entries a leader describes under ``sources/<source>`` (``layout.source_path``,
    e.g. django-celery-beat's rows) count as one more schedule, keyed ``sources/<source>``.
    """
    result: dict[str, dict[str, PlannedEntry] | None] = {}
    for fingerprint in {c.fingerprint for c in contenders if c.fingerprint}:
        result[fingerprint] = _read_schedule(client, root, fingerprint)
    result.update(_read_sources(client, root))
    return result


def _read_sources(client: Any, root: str) -> dict[str, dict[str, PlannedEntry] | None]:
    try:
        names = client.get_children(f"{root}/{SOURCES}")
    except NoNodeError:
        return {}
    found: dict[str, dict[str, PlannedEntry] | None] = {}
    for name in sorted(names):
        node = _get(client, source_path(root, name))
        if node is not None:  # deleted meanwhile: nothing to list
            found[f"{SOURCES}/{name}"] = decode_schedule(node[0])
    return found


def _read_schedule(client: Any, root: str, fingerprint: str) -> dict[str, PlannedEntry] | None:
    if not fingerprint.isprintable() or "/" in fingerprint or fingerprint in (".", ".."):
        return None
    try:
        node = _get(client, schedule_path(root, fingerprint))
    except (BadArgumentsError, ValueError):  # a name ZooKeeper or kazoo refuses
        return None
    return None if node is None else decode_schedule(node[0])


def scheduled_names(
    contenders: list[Contender], schedules: dict[str, dict[str, PlannedEntry] | None]
) -> frozenset[str] | None:
    """Union of every contender's schedule, or None when any of them is unknown."""
    if not contenders or any(c.fingerprint is None for c in contenders):
        return None
    names: set[str] = set()
    for listed in schedules.values():
        if listed is None:
            return None
        names.update(listed)
    return frozenset(names)


def resign_leader(client: Any, root: str, timeout: float = 5.0) -> ResignResult:
    """Delete the leader's contender node; wait up to ``timeout`` for another to lead.

    Returns at once when there is no leader (nothing deleted) or no other contender (the
    resigned instance will re-queue and lead again).
    """
    contenders = read_contenders(client, root)
    if not contenders:
        return ResignResult(None, None, 0)
    previous = contenders[0]  # well-formed and ephemeral: a foreign persistent node is never hit
    others = [c for c in contenders[1:] if not c.same_instance(previous)]
    # NoNodeError: it stepped down (or died) by itself meanwhile; the wait below still applies.
    with suppress(NoNodeError):
        client.delete(f"{election_path(root)}/{previous.node}")
    if not others:
        return ResignResult(previous, read_leader(client, root), 0)
    current = wait_for_leader(client, root, lambda c: not c.same_instance(previous), timeout)
    return ResignResult(previous, current or read_leader(client, root), len(others))


def wait_for_leader(
    client: Any,
    root: str,
    accept: Callable[[Contender], bool] = lambda _c: True,
    timeout: float = 5.0,
) -> Contender | None:
    """Poll until a leader for which ``accept`` is true heads the queue; None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        leader = read_leader(client, root)
        if leader is not None and accept(leader):
            return leader
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_INTERVAL)


def _get(client: Any, path: str) -> tuple[bytes, ZnodeStat] | None:
    """(data, stat) of ``path``, or None when it does not exist (any more)."""
    try:
        data, stat = client.get(path)
    except NoNodeError:
        return None
    return bytes(data or b""), stat


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
