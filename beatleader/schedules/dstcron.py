"""The next run of a crontab across a UTC-offset change, with Vixie cron / cronie semantics.

celery's crontab works on wall-clock fields: on a fall-back day it loses the runs of the repeated
hour's second occurrence (celery #10107), and a time in a spring-forward gap runs as late as
the gap is long. :func:`next_run` answers "the first run after this instant" as cron does
(man 8 cron, "Daylight Saving Time and other time changes"):

* a crontab whose hour field covers all 24 hours ("every hour or more often") runs by elapsed
  time: in a repeated hour it runs at each matching wall time of both occurrences (``0 * * * *``
  at 02:00 CEST and at 02:00 CET; ``*/30 * * * *`` every 30 minutes of real time); a wall time
  in a gap does not exist and is not run (the next matching time after the gap is);
* a crontab at specific hours runs once per matching wall time: in a repeated hour only at the
  first occurrence; a matching time in a gap runs once, at the instant the gap ends (03:00 CEST
  for ``30 2 * * *`` in Paris on the spring-forward day), several matching times in one gap
  still once.

Guarantees: the caller (:class:`beatleader.schedules.types.ZonedCrontab`) asks only when the instant
after which it looks, or celery's candidate, has a wall time that is repeated or skipped;
otherwise celery's own answer is used unchanged (and is then cron's too: celery's candidate is
the first matching wall time after the last run's, so a run that cron would add or move lies
in a repeated or skipped wall time no later than the candidate). Checked against a
minute-by-minute reference of cron's rules in zones with 1 h, 30 min and 2 h changes, at
01:00, 02:00 and midnight local (tests/test_dst_crontab.py). The work here is bounded: a few
calls of the crontab's own wall-time successor (celery's arithmetic, a "first matching wall
time after" function) and a bisection over the seconds around one transition (about 12 steps
for a one-hour change), never a walk minute by minute.

Not guaranteed: a zone whose offset changes by more than the time between two of its
transitions (no tz database zone does); a tzinfo that does not follow PEP 495 (``fold``): its
wall times all read as plain and celery's answer stands; cronie's special case of changes of
three hours or more (a clock or zone correction): every offset change is treated alike here.
A transition is located to the second (tz database transitions are on whole seconds).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone, tzinfo
from typing import NamedTuple

UTC = timezone.utc

#: A crontab's wall-time successor: the first matching naive wall time strictly after the
#: given naive wall time (celery's minute resolution: the seconds of the argument are ignored).
Successor = Callable[[datetime], datetime]

_TICK = timedelta(microseconds=1)


class DstCron:
    """Tunables of the DST arithmetic (class attributes; nothing here keeps state)."""

    #: How many successive gaps :func:`next_run` crosses for an every-hour crontab before it
    #: gives up (a gap is at most a few hours; one per transition).
    max_gaps = 8


class Shift(NamedTuple):
    """One UTC-offset change: its instant (UTC) and the offsets before and after it."""

    at: datetime
    before: timedelta
    after: timedelta

    @property
    def old_end(self) -> datetime:
        """The naive wall time the old offset would reach at ``at``."""
        return (self.at + self.before).replace(tzinfo=None)

    @property
    def new_start(self) -> datetime:
        """The naive wall time the new offset shows at ``at``."""
        return (self.at + self.after).replace(tzinfo=None)


def plain(moment: datetime) -> bool:
    """True when the wall time of ``moment`` (aware) occurs exactly once in its zone."""
    return moment.utcoffset() == moment.replace(fold=1 - moment.fold).utcoffset()


def shift_at(tz: tzinfo, wall: datetime) -> Shift | None:
    """The offset change that makes naive ``wall`` repeated or skipped in ``tz``; else None.

    PEP 495: fold 0 reads a repeated or skipped wall time with the offset before the change,
    fold 1 with the offset after it. The change lies between the two readings; it is found by
    bisection over whole seconds.
    """
    before = wall.replace(tzinfo=tz, fold=0).utcoffset()
    after = wall.replace(tzinfo=tz, fold=1).utcoffset()
    if before is None or after is None or before == after:
        return None
    naive = wall.replace(tzinfo=UTC)
    readings = sorted(((naive - before).timestamp(), (naive - after).timestamp()))
    low, high = int(readings[0]) - 1, int(readings[1]) + 1  # low: old offset; high: new one
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == before:
            low = middle
        else:
            high = middle
    return Shift(datetime.fromtimestamp(high, UTC), before, after)


def next_run(last: datetime, successor: Successor, every_hour: bool) -> datetime:
    """The first run instant (aware, UTC) strictly after ``last`` (aware, in the cron's zone).

    ``every_hour``: the hour field covers all 24 hours (elapsed-time semantics, see the module
    docstring); otherwise each matching wall time runs once.
    """
    tz = last.tzinfo
    assert tz is not None
    wall = last.replace(tzinfo=None, fold=0)
    shift = shift_at(tz, wall)
    if shift is None or shift.after > shift.before:  # last's own wall time is plain
        return _resolve(tz, successor(wall), successor, every_hour)
    # last is in a repeated hour: wall times [new_start, old_end) occur twice.
    following = successor(wall)
    if last.fold == 0 and following < shift.old_end:
        return _instant(tz, following, fold=0)  # still in the first occurrence
    if every_hour:
        start = wall if last.fold == 1 else shift.new_start - _TICK
        second = successor(start)
        if second < shift.old_end:
            return _instant(tz, second, fold=1)  # the second occurrence runs too
    return _resolve(tz, successor(shift.old_end - _TICK), successor, every_hour)


def _resolve(tz: tzinfo, wall: datetime, successor: Successor, every_hour: bool) -> datetime:
    """The run instant of matching naive ``wall``, the first one after an instant before it."""
    for _ in range(DstCron.max_gaps):
        shift = shift_at(tz, wall)
        if shift is None or shift.after < shift.before:
            return _instant(tz, wall, fold=0)  # plain, or a repeated hour's first occurrence
        if not every_hour:
            return shift.at  # skipped: once, when the gap ends
        wall = successor(shift.new_start - _TICK)  # skipped: the next time after the gap
    raise RuntimeError(f"crontab: no run time outside {DstCron.max_gaps} successive gaps")


def _instant(tz: tzinfo, wall: datetime, fold: int) -> datetime:
    return wall.replace(tzinfo=tz, fold=fold).astimezone(UTC)
