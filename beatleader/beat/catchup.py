"""The leader's schedule policies of one due entry: catch-up, jitter, start, end, limited runs.

A part of :class:`beatleader.Scheduler`, composed into it (``Scheduler.timing``); the policies
are parsed by ``schedules/policies.py``. Two questions, both pure (no ZooKeeper, no broker):

* :meth:`ScheduleTiming.adjust`, asked by ``Scheduler.safe_is_due`` after the schedule's own
  ``is_due``: is the entry due under its policy? A run of a jittered entry is due
  ``jitter.offset(name, ordinal)`` after its scheduled time; nothing is due before ``start_at``;
  an entry whose next scheduled time is after ``end_at``, or whose run count reached
  ``max_runs``, is *done*: never due again (asked again every ``max_interval``).
* :meth:`ScheduleTiming.plan`, asked by ``Scheduler._plan`` for a due entry whose policy sets
  ``catchup`` or ``jitter``: the run to commit. The missed runs (scheduled times after
  ``last_run_at`` up to now, from the schedule's own ``remaining_estimate``) are sent once
  (``once``), skipped past the window (``skip``) or sent one by one, oldest first, each with its
  scheduled time as ``last_run_at`` and its own ordinal (``all``); the entry is held while each
  is in the outbox and comes back at once for the next.

Guarantees: an entry without these policies is planned as before (the global misfire grace);
a run sent under jitter or ``all`` gets its *scheduled* time as ``last_run_at`` (an interval
schedule does not drift by its offsets, and a new leader computes the same next run); at most
:data:`MAX_WALK` scheduled times are computed per decision (older missed runs are not seen).
A schedule that cannot tell its times (raises) is planned as a plain run. Not guaranteed:
``all`` on a schedule whose ``remaining_estimate`` does not move forward (a user's class)
sends one run (the walk stops).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from beatleader.beat.planning import Run
from beatleader.beat.publishing import replaced
from beatleader.schedules import jitter
from beatleader.schedules.policies import ALL, ONCE, SKIP, RunPolicy

logger = logging.getLogger("beatleader")

__all__ = ["ScheduleTiming", "scheduled_after"]

#: Held while ``scheduled_after`` pins a schedule's clock (see there).
_PINNING = threading.RLock()  # reentrant: a schedule of the user's may ask within
#: Most scheduled times one decision walks (a month of runs every 3 s); older ones are not seen.
MAX_WALK = 1_000_000


def scheduled_after(schedule: Any, moment: datetime) -> datetime:
    """The first scheduled time of ``schedule`` after a run at ``moment`` (its own arithmetic).

    ``remaining_estimate`` reads the schedule's clock again: on a clock that moved meanwhile,
    ``now + remaining`` would come out early by those microseconds, and a run stored with that
    time as its ``last_run_at`` would be found due again at the same scheduled time (a jittered
    crontab run sent twice, with ordinals 1 and 2). So the schedule's ``nowfun`` (celery's
    ``BaseSchedule.now`` asks it first) answers the one reading while it works the time out; a
    schedule without a settable ``nowfun`` is asked as it is. One thread at a time (``_PINNING``):
    the metrics scrape asks ``done`` from its own thread, and two pins of one schedule interleaved
    would leave it pinned for good."""
    with _PINNING:
        now = schedule.now()
        try:
            saved = schedule.nowfun
            schedule.nowfun = lambda: now
        except Exception:  # a user's schedule without the attribute: its own clock, as before
            return now + schedule.remaining_estimate(moment)  # type: ignore[no-any-return]
        try:
            return now + schedule.remaining_estimate(moment)  # type: ignore[no-any-return]
        finally:
            schedule.nowfun = saved


def missed_times(entry: Any, policy: RunPolicy, now: datetime, limit: int) -> list[datetime]:
    """Scheduled times after ``entry.last_run_at`` up to ``now`` (at most ``limit``), in order,
    within ``start_at``/``end_at``."""
    times: list[datetime] = []
    moment = entry.last_run_at
    while len(times) < limit:
        following = scheduled_after(entry.schedule, moment)
        if following > now or following <= moment:
            break
        if policy.end_at is not None and following > policy.end_at:
            break
        if policy.start_at is None or following >= policy.start_at:
            times.append(following)
        moment = following
    return times


@dataclass
class ScheduleTiming:
    """The timing decisions of one scheduler (see the module docstring)."""

    #: ``policy(entry)``: the entry's policy (a bad one reported once and read as the default).
    policy: Callable[[Any], RunPolicy]
    #: Seconds a done entry is asked again in (celery's ``max_interval``).
    max_interval: Callable[[], float]

    def adjust(self, entry: Any, due: bool, delay: float) -> tuple[bool, float]:
        """``(due, delay)`` of the schedule's ``is_due``, under the entry's policy."""
        policy = self.policy(entry)
        if not policy.shapes_times:
            return due, delay
        try:
            return self._adjust(entry, policy, due, delay)
        except Exception:  # a schedule that cannot tell its times: as it said
            return due, delay

    def _adjust(self, entry: Any, policy: RunPolicy, due: bool, delay: float) -> tuple[bool, float]:
        schedule = entry.schedule
        now = schedule.now()
        scheduled = scheduled_after(schedule, entry.last_run_at)
        if policy.done(entry.total_run_count, scheduled):
            return False, self.max_interval()
        if policy.start_at is not None and scheduled < policy.start_at:
            scheduled = policy.start_at
        ordinal = entry.total_run_count + 1
        wait = (_due(entry, policy, scheduled) - now).total_seconds()
        if wait > 0:
            return False, wait
        following = scheduled_after(schedule, scheduled)
        after = following + timedelta(seconds=jitter.offset(entry.name, ordinal + 1, policy.jitter))
        return True, max((after - now).total_seconds(), 0.0)

    def remaining(self, entry: Any) -> float | None:
        """Seconds until the run of ``entry`` falls due under its policy (start, jitter),
        negative once due; None when the policy shapes no time or the schedule cannot tell (the
        commit lead then asks the schedule's ``remaining_estimate``)."""
        policy = self.policy(entry)
        if not policy.shapes_times:
            return None
        try:
            scheduled = scheduled_after(entry.schedule, entry.last_run_at)
            return float((_due(entry, policy, scheduled) - entry.schedule.now()).total_seconds())
        except Exception:
            return None

    def done(self, entry: Any) -> bool:
        """Whether the entry's policy says it runs no more (``max_runs``, past ``end_at``)."""
        policy = self.policy(entry)
        if not policy.shapes_times:
            return False
        try:
            scheduled = scheduled_after(entry.schedule, entry.last_run_at)
        except Exception:
            scheduled = None
        return policy.done(entry.total_run_count, scheduled)

    def plans(self, entry: Any) -> bool:
        """Whether :meth:`plan` decides this entry's runs (else the global misfire grace)."""
        policy = self.policy(entry)
        return policy.catchup is not None or policy.jitter is not None

    def plan(self, entry: Any, delay: float, lateness: float) -> Run:
        """The run of due ``entry`` under its catch-up policy (see the module docstring)."""
        policy = self.policy(entry)
        now = entry.schedule.now()
        limit = MAX_WALK
        try:
            times = missed_times(entry, policy, now, limit)
        except Exception:
            times = []
        if not times:
            return Run(next(entry), delay, True, lateness)
        name = entry.name
        lateness = (now - times[0]).total_seconds()
        if policy.catchup == ALL:
            if len(times) > policy.max_catchup:
                return self._skip_oldest(entry, times, policy.max_catchup, lateness)
            sent = replaced(next(entry), last_run_at=times[0])
            return Run(sent, 0.0 if len(times) > 1 else delay, True, lateness)
        if policy.catchup == SKIP:
            window = policy.catchup_window or 0.0
            late = [t for t in times if (now - t).total_seconds() > window]
            if late:
                if len(late) == len(times):
                    skip = replaced(entry, last_run_at=times[-1])
                    return Run(skip, delay, False, lateness, skips=len(late))
                skip = replaced(entry, last_run_at=late[-1])
                logger.warning(
                    "beatleader: skipping %d run(s) of %r due more than catchup_window %g s ago",
                    len(late),
                    name,
                    window,
                )
                return Run(skip, 0.0, False, lateness, skips=len(late))
        if policy.catchup in (ONCE, SKIP) and policy.jitter is None and len(times) > 1:
            return Run(next(entry), delay, True, lateness)  # coalesced, as celery does
        return Run(replaced(next(entry), last_run_at=times[-1]), delay, True, lateness)

    def _skip_oldest(self, entry: Any, times: list[datetime], keep: int, lateness: float) -> Run:
        count = len(times) - keep
        logger.error(
            "beatleader: entry %r missed %d runs, more than max_catchup %d: skipping the oldest "
            "%d, sending the latest %d",
            entry.name,
            len(times),
            keep,
            count,
            keep,
        )
        skip = replaced(entry, last_run_at=times[count - 1])
        return Run(skip, 0.0, False, lateness, skips=count)


def _due(entry: Any, policy: RunPolicy, scheduled: datetime) -> datetime:
    """When the next run of ``entry``, scheduled at ``scheduled``, falls due: not before
    ``start_at``, plus its jitter."""
    if policy.start_at is not None and scheduled < policy.start_at:
        scheduled = policy.start_at
    ordinal = entry.total_run_count + 1
    return scheduled + timedelta(seconds=jitter.offset(entry.name, ordinal, policy.jitter))
