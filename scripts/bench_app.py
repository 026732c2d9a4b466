"""The Celery app ``scripts/benchmark.py`` runs its beats with: ``celery -A bench_app beat ...``.

It is ``tests.app`` (shaped by ``TEST_BROKER_DIR`` / ``TEST_REDIS_URL`` / ``TEST_SCHEDULE`` /
``TEST_MAX_INTERVAL``, see that module) plus what the benchmark needs:

``BENCH_REDBEAT_LOCK_TIMEOUT``
    ``redbeat_lock_timeout`` in seconds (tests.app has no variable for it), so redbeat's lock
    can be set to beatleader's session timeout.
``bench_sent_ms`` header
    the publisher's CLOCK_MONOTONIC milliseconds at publication, so send times can be read back
    from a Redis broker, whose messages carry no timestamp.
``bench_late_ms`` header
    how late the message is published against the due time of its run, in milliseconds. When a
    schedule entry's ``is_due()`` says "due", the due time (``last_run_at`` + the interval of
    its ``schedule``; celery's interval schedule) is recorded under the entry's name; the
    publication of a message whose first argument is that name (``tests.app`` sends the entry
    name as ``args[0]``) takes it. Both ends read the wall clock in the beat process itself.
    ``ScheduleEntry.is_due`` (celery, beatleader) and ``RedBeatSchedulerEntry.is_due`` (redbeat
    overrides it) are wrapped; the wrapper only records a number.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from celery import beat
from celery.signals import before_task_publish

from tests.app import app

__all__ = ["LATE_MS_HEADER", "SENT_MS_HEADER", "app"]

SENT_MS_HEADER = "bench_sent_ms"
LATE_MS_HEADER = "bench_late_ms"

#: Entry name -> due time (epoch seconds) of the run its latest "due" answer was about.
_due_at: dict[str, float] = {}

if os.environ.get("BENCH_REDBEAT_LOCK_TIMEOUT"):
    app.conf.redbeat_lock_timeout = float(os.environ["BENCH_REDBEAT_LOCK_TIMEOUT"])


def due_time(entry: Any) -> float | None:
    """``last_run_at`` + the interval of ``entry`` (epoch seconds); None if not an interval."""
    run_every = getattr(entry.schedule, "run_every", None)
    if not isinstance(run_every, timedelta) or entry.last_run_at is None:
        return None
    last_run_at = entry.schedule.maybe_make_aware(entry.last_run_at)
    return float((last_run_at + run_every).timestamp())


def recording_due(is_due: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap an entry class's ``is_due`` to record the due time of every due run."""

    @functools.wraps(is_due)
    def wrapper(entry: Any) -> Any:
        result = is_due(entry)
        if result[0]:
            due = due_time(entry)
            if due is not None:
                _due_at[entry.name] = due
        return result

    return wrapper


def stamp(body: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish``: add the publication time and the lateness to the headers."""
    if headers is None:
        return
    headers[SENT_MS_HEADER] = int(time.monotonic() * 1000)
    args = body[0] if isinstance(body, (tuple, list)) and body else None
    name = args[0] if isinstance(args, (tuple, list)) and args else None
    due = _due_at.pop(name, None) if isinstance(name, str) else None
    if due is not None:
        headers[LATE_MS_HEADER] = round((time.time() - due) * 1000, 1)


def install() -> None:
    beat.ScheduleEntry.is_due = recording_due(beat.ScheduleEntry.is_due)
    try:
        from redbeat.schedulers import RedBeatSchedulerEntry
    except ImportError:  # redbeat is optional: only its benchmark needs it
        pass
    else:
        RedBeatSchedulerEntry.is_due = recording_due(RedBeatSchedulerEntry.is_due)
    before_task_publish.connect(stamp, weak=False)


install()
