"""The celery schedules of runtime definitions that celery lacks: a one-off, a zoned crontab.

:class:`OneOff` is due once, at its moment, and then stays done; :class:`ZonedCrontab` is a
celery crontab that runs in its own time zone (or the app's) and keeps cron's rules across a
daylight-saving change (the arithmetic is in :mod:`beatleader.schedules.dstcron`). Both survive
``copy.copy`` and pickling with what makes them what they are (``entry list`` and the status tools
copy and describe them), and compare equal only to the same moment / the same fields and zone.

Not guaranteed: a OneOff whose entry starts with ``last_run_at`` at or after its moment is done
without running (``Definition.to_entry`` starts it just before the moment for that reason).
A ZonedCrontab's DST rules hold for the runs beat asks about through ``is_due`` /
``remaining_estimate``; celery's ``remaining_delta`` is left as celery's (wall-clock) arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from celery.schedules import crontab, schedule
from celery.utils.time import ffwd

from beatleader.schedules.dstcron import next_run, plain


class OneOff(schedule):  # type: ignore[misc]
    """Due once when now >= ``at`` and the entry has not run since; then never again.

    "Has not run since" is ``last_run_at`` before ``at``; afterwards :meth:`is_due` answers
    (False, a day), so the entry stays, done.
    """

    #: Seconds a done one-off asks to be checked again.
    done_recheck = 86400.0

    def __init__(self, at: datetime, nowfun: Any = None, app: Any = None) -> None:
        super().__init__(timedelta(days=1), nowfun=nowfun, app=app)
        self.at = at

    def done(self, last_run_at: datetime | None) -> bool:
        return last_run_at is not None and self._aware(last_run_at) >= self.at

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        if self.done(last_run_at):
            return timedelta(seconds=self.done_recheck)
        return self.at - self._aware(self.now())

    def is_due(self, last_run_at: datetime) -> tuple[bool, float]:
        if self.done(last_run_at):
            return False, self.done_recheck
        remaining = (self.at - self._aware(self.now())).total_seconds()
        if remaining <= 0:
            return True, self.done_recheck
        return False, remaining

    def _aware(self, moment: datetime) -> datetime:
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)

    def __repr__(self) -> str:
        return f"<one-off at {self.at.isoformat()}>"

    def __reduce__(self) -> Any:
        return (self.__class__, (self.at, self.nowfun, self._app))

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, OneOff):
            return self.at == other.at
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.at)


def cron_rules(entries: Iterable[Any]) -> None:
    """Give each entry whose schedule is exactly celery's ``crontab`` cron's DST rules: the
    same fields, zone and app in a :class:`ZonedCrontab` (a subclass of the user's is kept)."""
    for entry in entries:
        sched: Any = getattr(entry, "schedule", None)
        if type(sched) is not crontab:
            continue
        fields = (
            sched._orig_minute,
            sched._orig_hour,
            sched._orig_day_of_week,
            sched._orig_day_of_month,
            sched._orig_month_of_year,
        )
        zoned = ZonedCrontab(None, *fields, nowfun=sched.nowfun, app=sched._app)
        if "tz" in vars(sched):  # a crontab made with its own tz keeps it
            zoned.tz = sched.tz
        entry.schedule = zoned


class ZonedCrontab(crontab):  # type: ignore[misc]
    """A celery crontab in ``zone`` (None: the app's timezone) that keeps cron's DST rules.

    On a day without a UTC-offset change it is celery's crontab exactly: the same due times, the
    same ``is_due`` contract, ``remaining_estimate`` from celery's own arithmetic. When the last
    run or celery's next candidate has a wall time that the zone repeats or skips, the next run
    comes from :func:`beatleader.schedules.dstcron.next_run` instead (cronie's semantics, see that
    module). Copies and pickles keep the zone.
    """

    #: The hour field of an "every hour or more often" crontab (elapsed-time DST semantics).
    all_hours = frozenset(range(24))

    def __init__(self, zone: str | None, *fields: Any, **kwargs: Any) -> None:
        super().__init__(*fields, **kwargs)
        self.zone = zone
        if zone is not None:
            self.tz = ZoneInfo(zone)  # a cached property: this instance's value wins

    def remaining_estimate(self, last_run_at: datetime, ffwd: type = ffwd) -> timedelta:
        last: datetime
        now: datetime
        last, delta, now = self.remaining_delta(last_run_at, ffwd=ffwd)
        candidate: datetime = last + delta  # what celery's ``remaining`` adds, then subtracts
        if plain(last) and plain(candidate):  # no offset change involved: celery's answer
            return candidate.astimezone(timezone.utc) - now.astimezone(timezone.utc)
        following = next_run(last, self._successor, self.hour == self.all_hours)
        return following - now

    def _successor(self, wall: datetime) -> datetime:
        """celery's first matching wall time after naive ``wall`` (read in this zone)."""
        last, delta, _now = self.remaining_delta(wall.replace(tzinfo=self.tz))
        return (last + delta).replace(tzinfo=None, fold=0)  # type: ignore[no-any-return]

    def __reduce__(self) -> Any:
        _cls, fields, kwargs = super().__reduce__()
        return (self.__class__, (self.zone, *fields), kwargs)

    def __eq__(self, other: Any) -> bool:
        same = super().__eq__(other)
        return (
            same if same is NotImplemented else same and self.zone == getattr(other, "zone", None)
        )

    def __hash__(self) -> int:
        return hash((self.zone, str(self._orig_minute), str(self._orig_hour)))

    def __repr__(self) -> str:
        zone = self.zone or "app timezone"
        return f"{super().__repr__()[:-1]} ({zone})>"
