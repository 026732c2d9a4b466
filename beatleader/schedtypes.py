"""The celery schedules of runtime definitions that celery lacks: a one-off, a zoned crontab.

:class:`OneOff` is due once, at its moment, and then stays done; :class:`ZonedCrontab` is a
celery crontab that runs in its own time zone instead of the app's. Both survive ``copy.copy``
and pickling with what makes them what they are (the leader copies every schedule to put it on
ZooKeeper's clock), and compare equal only to the same moment / the same fields and zone.

Not guaranteed: a OneOff whose entry starts with ``last_run_at`` at or after its moment is done
without running (``Definition.to_entry`` starts it just before the moment for that reason).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from celery.schedules import crontab, schedule


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


class ZonedCrontab(crontab):  # type: ignore[misc]
    """A celery crontab that runs in ``zone`` rather than the app's timezone (copies keep it)."""

    def __init__(self, zone: str, *fields: Any, **kwargs: Any) -> None:
        super().__init__(*fields, **kwargs)
        self.zone = zone
        self.tz = ZoneInfo(zone)  # a cached property: this instance's value wins

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
        return f"{super().__repr__()[:-1]} ({self.zone})>"
