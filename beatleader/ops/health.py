"""One entry's health, for ``beatleader status --check --entry NAME``.

:func:`entry_problem` judges an entry from the status (its plan and the leader's records) and its
run history (:func:`beatleader.runs.history.read_history`, 3 requests). An entry is unhealthy
when either:

* its **last finished run failed**: the newest run a worker guard recorded as ``succeeded`` or
  ``failed`` is ``failed`` (a run still running, retrying, or only sent does not count);
* it has **not succeeded for two periods**: the newest succeeded run finished (or, with none in
  the history, the oldest run the history holds was due) more than two periods ago. The period
  is the plan's interval (``every`` entries); for a crontab or custom schedule, the gap between
  the last two runs the leader sent (its ``recent`` records); when neither is known (fewer than
  two sent records), this check is skipped.

Guarantees: it only reads; every problem is one line, entry names escaped.

Not guaranteed: an entry whose workers run without the worker guard has no outcomes (only the
leader's ``sent`` records), so only the leader's view is judged: the success check is skipped;
an entry that never ran is healthy (nothing to judge); times compare this machine's clock with
ZooKeeper's (marker ``mtime``), so a clock skew of a sizeable part of two periods shifts the
verdict; a crontab's gaps vary (weekdays only): the last gap is the period used.
"""

from __future__ import annotations

import time

from beatleader.ops.model import Status
from beatleader.ops.render import cell
from beatleader.runs.history import History
from beatleader.runs.records import Outcome, leader_record

__all__ = ["PERIODS", "entry_period", "entry_problem"]

#: Periods without a success after which an entry is unhealthy.
PERIODS = 2


def entry_problem(status: Status, history: History, now: float | None = None) -> str | None:
    """Why the entry of ``history`` is unhealthy (one line), or None; see the module doc."""
    name = cell(history.name)
    finished = [r for r in history.records if r.outcome in (Outcome.SUCCEEDED, Outcome.FAILED)]
    if finished and finished[0].outcome is Outcome.FAILED:
        last = finished[0]
        error = f": {cell(last.error)}" if last.error else ""
        return f"entry {name}: its last finished run (run {last.ordinal}) failed{error}"
    entry = next((e for e in status.entries if e.name == history.name), None)
    if entry is not None and entry.done:  # its policy ended it: not overdue
        return None
    period = entry_period(status, history.name)
    if period is None or not history.guarded or not history.records:
        return None
    now = time.time() if now is None else now
    succeeded = [r for r in finished if r.outcome is Outcome.SUCCEEDED]
    if succeeded:
        since = succeeded[0].finished_at
        what = "last succeeded"
    else:
        oldest = history.records[-1]
        since = oldest.due_at or oldest.started_at or oldest.finished_at
        what = "has no succeeded run since its oldest recorded run, due"
    if since is None or now - since <= PERIODS * period:
        return None
    return (
        f"entry {name} {what} {now - since:.0f} s ago, more than {PERIODS} periods of {period:g} s"
    )


def entry_period(status: Status, name: str) -> float | None:
    """Seconds between two runs of entry ``name``: its interval, else the last sent gap."""
    entry = next((e for e in status.entries if e.name == name), None)
    if entry is None:
        return None
    if entry.plan is not None and entry.plan.every is not None and entry.plan.every > 0:
        return entry.plan.every
    if entry.state is None:
        return None
    sent = sorted(
        record.due_at
        for record in map(leader_record, entry.state.recent)
        if record is not None and record.outcome is Outcome.SENT and record.due_at is not None
    )
    if len(sent) < 2 or sent[-1] <= sent[-2]:
        return None
    return sent[-1] - sent[-2]
