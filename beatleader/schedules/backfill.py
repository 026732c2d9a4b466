"""Backfill: the runs a schedule would have had in a past (or any) range of time.

``beatleader entry backfill NAME --from T --to T`` (``entries/api.py``) writes one request node
(``zk/layout.py``: ``backfills/<name>__run__<seq>``, JSON :class:`BackfillRequest`); the leader
(``beat/backfill.py``) computes the times with the entry's own schedule (:func:`times_in`),
publishes each run with the deterministic task id of ``layout.backfill_task_id`` (entry and
scheduled time) and deletes the request. This module is pure: it parses, walks and encodes.

Guarantees: :func:`times_in` gives the scheduled times ``t`` with ``start <= t <= end`` in order,
from the schedule's own arithmetic (``remaining_estimate``, so a DST-aware crontab keeps its
rules), at most ``limit + 1`` of them (one more than allowed tells the caller to refuse). An
interval schedule (celery's ``schedule``) has no anchor of its own: its runs in the range are
``start, start + every, ...``. Bad input raises :class:`DefinitionError` with one line naming the
option (``--from``, ``--to``, ``--max``).

Not guaranteed: a schedule whose ``remaining_estimate`` does not move forward (a user's class
that cannot tell its times) gives the times up to where it stops.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from celery.schedules import schedule

from beatleader.schedules.checks import DefinitionError, parse_at, shown

__all__ = [
    "DEFAULT_MAX",
    "BackfillRequest",
    "parse_request",
    "times_in",
]

#: Most runs one backfill may publish unless ``--max`` says otherwise.
DEFAULT_MAX = 1_000
#: Largest ``--max`` accepted (a bigger backfill goes in several ranges).
MAX_LIMIT = 100_000
_TINY = timedelta(microseconds=1)


@dataclass(frozen=True)
class BackfillRequest:
    """What a backfill request node holds (JSON), checked: a range and a cap."""

    start: datetime
    end: datetime
    limit: int = DEFAULT_MAX
    changed_by: str | None = None
    changed_at: str | None = None

    def encode(self) -> bytes:
        fields = {
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "max": self.limit,
            "changed_by": self.changed_by,
            "changed_at": self.changed_at,
        }
        return json.dumps({k: v for k, v in fields.items() if v is not None}).encode()

    @classmethod
    def decode(cls, data: bytes) -> BackfillRequest:
        """The request in ``data``; :class:`DefinitionError` (one line) if it is not one."""
        try:
            fields = json.loads(data.decode("utf-8")) if data else None
        except (UnicodeDecodeError, ValueError):
            fields = None
        if not isinstance(fields, dict):
            raise DefinitionError(f"backfill request data {shown(data)} is not a JSON object")
        found = parse_request(fields.get("from"), fields.get("to"), fields.get("max", DEFAULT_MAX))
        by, at = fields.get("changed_by"), fields.get("changed_at")
        return cls(
            found.start,
            found.end,
            found.limit,
            by if isinstance(by, str) else None,
            at if isinstance(at, str) else None,
        )


def parse_request(start: Any, end: Any, limit: Any = DEFAULT_MAX) -> BackfillRequest:
    """A checked range and cap; one-line :class:`DefinitionError` naming the option if not."""
    first, last = parse_at(start, "--from"), parse_at(end, "--to")
    if first > last:
        raise DefinitionError(
            f"--from {first.isoformat()} is after --to {last.isoformat()}: give the earlier first"
        )
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise DefinitionError(
            f"--max {shown(limit)} must be a whole number of runs from 1 to {MAX_LIMIT:,}"
        )
    return BackfillRequest(first, last, limit)


def times_in(sched: Any, start: datetime, end: datetime, limit: int) -> list[datetime]:
    """The scheduled times of ``sched`` in ``[start, end]`` (UTC), at most ``limit + 1``."""
    start, end = start.astimezone(timezone.utc), end.astimezone(timezone.utc)
    if isinstance(sched, schedule) and _is_interval(sched):  # its runs start at ``start``
        every = sched.run_every
        if every <= timedelta(0):
            return []
        count = min(int((end - start) / every) + 1, limit + 1)
        return [start + every * n for n in range(count)]
    times: list[datetime] = []
    moment = start - _TINY
    still = frozen(sched)
    while len(times) <= limit:
        following = next_after(still, moment)
        if following <= moment or following > end:
            break
        if following >= start:
            times.append(following)
        moment = following
    return times


def frozen(sched: Any) -> Any:
    """A shallow copy of ``sched`` whose clock stands still at its ``now()`` (when it has a
    ``nowfun``), so that ``now() + remaining_estimate(t)`` is its next time after ``t`` exactly:
    with a moving clock the two readings differ by microseconds, and a walk from a time a little
    before a crontab's run finds that run again."""
    if not hasattr(sched, "nowfun"):
        return sched
    still = copy.copy(sched)
    moment = sched.now()
    still.nowfun = lambda: moment
    return still


def next_after(sched: Any, moment: datetime) -> datetime:
    """The first scheduled time of ``sched`` after a run at ``moment`` (its own arithmetic)."""
    following: datetime = sched.now() + sched.remaining_estimate(moment)
    return following.astimezone(timezone.utc)


def _is_interval(sched: Any) -> bool:
    """Whether ``sched`` keeps celery's interval arithmetic (a subclass that only renames it)."""
    return type(sched).remaining_estimate is schedule.remaining_estimate
