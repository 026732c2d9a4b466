"""Pause on failure: an entry with ``pause_after_failures: N`` pauses itself after N failed runs
in a row (``schedules/policies.py``).

A part of :class:`beatleader.Scheduler`, composed into it (``Scheduler.failures``). Before a due
run of such an entry is sent, :meth:`FailureWatch.check` reads what the worker guard recorded
about the entry's recent runs: the listing of its ``dedup/`` folder (one request) and each of the
newest N markers not read before (usually one). When the newest N finished runs all failed, the
run is not sent (it is committed as a skip, ``skipped:paused``: the runs before it count no more,
for this leader and the next) and the entry is paused, the way ``beatleader entry pause`` pauses
it (a static entry: a ``paused/<entry>`` node; a runtime entry: its definition's ``enabled``
false, written at the version read), with a note in ``paused/<entry>``: when, which runs, the
last error. It is logged as ERROR once and counted (problem kind ``entry-paused``); ``entry
resume`` clears both.

Guarantees: an entry without the option costs nothing; a run still running or queued counts
neither way (only finished runs: their final marker); a success resets the count. Everything read
is another client's data: garbage reads as no record. A pause that cannot be written (an ACL, the
connection) is one ERROR and the run is sent as if nothing happened (fail open: the schedule goes
on), tried again at the next run.

Not guaranteed: a pause within the same second as the Nth failure: the check runs when the entry's
next run falls due. Runs executed without the guard record nothing and never pause an entry.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from beatleader.beat.state import StoredState
from beatleader.runs.records import Outcome, RunRecord, leader_record, read_marker, run_ordinals
from beatleader.schedules.definitions import Definition
from beatleader.zk import layout
from beatleader.zk.multiread import read_nodes

logger = logging.getLogger("beatleader")

__all__ = ["PAUSED_REASON", "FailureWatch", "pause", "pause_note", "paused_floor"]

#: Who the pause note names as having paused the entry.
PAUSED_BY = "beatleader (pause_after_failures)"
#: The skip reason of the run a pause did not send.
PAUSED_REASON = "paused"


class FailureWatch:
    """The failure counts of one leader's entries (see the module docstring)."""

    #: Seconds each read may take.
    request_timeout = 10.0

    def __init__(self, root: str) -> None:
        self.root = root
        #: (entry, incarnation) -> ordinal -> the final record read (newest N kept).
        self._seen: dict[tuple[str, str | None], dict[int, RunRecord]] = {}
        #: (entry, incarnation) -> the newest run counted into a pause (its runs count no more).
        self._floors: dict[tuple[str, str | None], int] = {}

    def failed_runs(
        self, client: Any, name: str, stored: StoredState | None, limit: int
    ) -> list[RunRecord]:
        """The newest finished runs, newest first, while they failed: at most ``limit``."""
        state = stored.state if stored is not None else None
        if client is None or state is None:
            return []
        key = (name, state.incarnation)
        seen = self._seen.setdefault(key, {})
        folder = f"{layout.dedup_path(self.root)}/{layout.dedup_folder(name, state.incarnation)}"
        try:
            children = client.get_children_async(folder).get(timeout=self.request_timeout)
        except NoNodeError:
            return []
        floor = max(self._floors.get(key, 0), paused_floor(state.recent))
        markers = sorted(run_ordinals(children)[1], reverse=True)
        markers = [ordinal for ordinal in markers if ordinal > floor][:limit]
        unread = [o for o in markers if o not in seen]
        paths = [f"{folder}/d{o:020d}" for o in unread]
        for ordinal, result in zip(unread, read_nodes(client, paths), strict=True):
            try:
                data, stat = result.get(timeout=self.request_timeout)
            except NoNodeError:
                continue
            record = read_marker(ordinal, layout.json_object(bytes(data or b"")), stat.mtime / 1e3)
            if record.outcome is not Outcome.RETRYING:  # a retrying run has not ended
                seen[ordinal] = record
        for old in sorted(seen)[:-limit]:
            del seen[old]
        streak: list[RunRecord] = []
        for ordinal in markers:
            finished = seen.get(ordinal)
            if finished is None:
                continue  # retrying, or gone: neither way
            if finished.outcome is not Outcome.FAILED:
                break
            streak.append(finished)
        return streak

    def paused(self, name: str, stored: StoredState | None, failed: list[RunRecord]) -> None:
        """``failed`` paused the entry: they count no more (a resumed entry starts from zero)."""
        state = stored.state if stored is not None else None
        if state is not None and failed and failed[0].ordinal is not None:
            self._floors[(name, state.incarnation)] = failed[0].ordinal

    def forget(self) -> None:
        self._seen.clear()
        self._floors.clear()


def paused_floor(recent: tuple[Any, ...]) -> int:
    """The last run sent before the entry's last pause after failures, from the leader's records
    in its state (``skipped:paused``, the run a pause did not send); 0 when none."""
    floor = sent = 0
    for item in recent:
        record = leader_record(item)
        if record is None:
            continue
        if record.outcome is Outcome.SENT and record.ordinal is not None:
            sent = record.ordinal
        elif record.outcome is Outcome.SKIPPED and record.reason == PAUSED_REASON:
            floor = sent
    return floor


def pause_note(failed: list[RunRecord]) -> dict[str, Any]:
    """The note of a pause after ``failed`` (newest first)."""
    runs = ", ".join(str(r.ordinal) for r in reversed(failed))
    last = failed[0].error or "no error recorded"
    return {
        "changed_by": PAUSED_BY,
        "changed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reason": f"{len(failed)} failed runs in a row (runs {runs}); last error: {last}",
        "runs": [r.ordinal for r in reversed(failed)],
    }


def pause(client: Any, root: str, name: str, runtime: bool, note: dict[str, Any]) -> None:
    """Pause ``name`` as ``entry pause`` does, with ``note`` in ``paused/<name>``; raises kazoo's
    errors (the caller reports them)."""
    data = json.dumps(note).encode()
    marker = layout.paused_entry_path(root, name)
    try:
        client.create(marker, data, makepath=True)
    except NodeExistsError:
        client.set(marker, data)
    if not runtime:
        return
    path = layout.definition_path(root, name)
    for _attempt in range(5):
        try:
            raw, stat = client.get(path)
        except NoNodeError:
            return  # removed meanwhile: nothing runs
        definition, _problem = Definition.parse(bytes(raw or b""))
        if definition is None or not definition.enabled:
            return
        paused = replace(
            definition, enabled=False, changed_by=PAUSED_BY, changed_at=note["changed_at"]
        )
        try:
            client.set(path, paused.encode(), version=stat.version)
            return
        except BadVersionError:
            continue  # changed meanwhile: pause the new definition
