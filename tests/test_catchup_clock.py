"""``catchup.scheduled_after`` on a clock that moves between two readings (no process, no server).

A schedule's ``remaining_estimate`` reads its clock itself: ``now + remaining`` on two readings
came out a few microseconds early, so a jittered crontab run stored with that scheduled time as
its ``last_run_at`` was found due again at the same minute (sent twice, ordinals 1 and 2; the
benchmark's jitter phase showed 1,000 sends of 500 entries). Here every reading of the clock
moves it on by 1 ms, so the old arithmetic is early by at least that.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery
from celery.schedules import crontab, schedule

from beatleader.beat.catchup import ScheduleTiming, scheduled_after
from beatleader.schedules import jitter
from beatleader.schedules.policies import RunPolicy

START = datetime(2026, 12, 7, 2, 19, 30, tzinfo=timezone.utc)


class Ticking:
    """A clock that moves on by 1 ms at every reading."""

    def __init__(self, start: datetime) -> None:
        self.at = start

    def __call__(self) -> datetime:
        self.at += timedelta(milliseconds=1)
        return self.at


def _app() -> Celery:
    app = Celery(set_as_current=False)
    app.conf.update(timezone="UTC", enable_utc=True)
    return app


def test_the_scheduled_time_is_exact_on_a_moving_clock() -> None:
    clock = Ticking(START)
    minutely = crontab(minute="*", nowfun=clock, app=_app())
    assert scheduled_after(minutely, START) == datetime(2026, 12, 7, 2, 20, tzinfo=timezone.utc)
    assert minutely.nowfun is clock  # given back
    every = schedule(timedelta(seconds=7), nowfun=clock, app=_app())
    assert scheduled_after(every, START) == START + timedelta(seconds=7)


def test_a_jittered_run_stored_at_its_scheduled_time_is_not_due_again() -> None:
    clock = Ticking(datetime(2026, 12, 7, 2, 20, 5, tzinfo=timezone.utc))
    minutely = crontab(minute="*", nowfun=clock, app=_app())
    sent: Any = type("Entry", (), {})()
    sent.name, sent.schedule, sent.total_run_count = "jitter-000", minutely, 1
    sent.last_run_at = scheduled_after(minutely, START)  # what the plan stores: 02:20:00
    policy = RunPolicy(jitter=10.0)
    timing = ScheduleTiming(lambda entry: policy, lambda: 1.0)
    due, delay = timing.adjust(sent, True, 0.0)
    assert not due
    # Due next at 02:21:00 + the offset of ordinal 2, not at 02:20:00 + that offset.
    expected = 55 + jitter.offset("jitter-000", 2, 10.0)
    assert abs(delay - expected) < 0.1, delay


class Slow(schedule):  # type: ignore[misc]
    """An interval schedule whose ``remaining_estimate`` takes 1 ms (a thread switch inside)."""

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        time.sleep(0.001)
        return super().remaining_estimate(last_run_at)  # type: ignore[no-any-return]


def test_two_threads_working_out_times_leave_the_schedule_its_clock() -> None:
    # The beat's tick and the metrics scrape (``Scheduler.entry_done``) both ask; interleaved
    # pins of one schedule would leave it answering one frozen time for good.
    slow = Slow(timedelta(seconds=7), app=_app())
    results: list[datetime] = []

    def ask() -> None:
        for _ in range(30):
            results.append(scheduled_after(slow, START))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert slow.nowfun is None  # its own clock again
    assert set(results) == {START + timedelta(seconds=7)}
