"""The leader's backfills: every run a schedule would have had in a range, published once.

A part of :class:`beatleader.Scheduler`, composed into it (``Scheduler.backfill``). The requests
(``backfills/<name>__run__<seq>``, ``schedules/backfill.py``) come from the runtime source's
watch (``beat/sources/runtimewatch.py``); at each tick while leading, :meth:`Backfills.step`
takes the oldest ones:

1. **Check**: the request's data must parse and name an entry this leader has (static, paused,
   runtime or from another source). A request naming no entry here is kept for the scheduler's
   ``unknown_request_grace`` (a rolling deploy), then deleted; one that does not parse, whose
   schedule cannot tell its times, or whose range holds more runs than its ``max`` is reported
   in one line (ERROR, kind ``backfill``) and deleted under the fence: nothing is published.
2. **Accept under the fence**: the request's data is rewritten with ``accepted_by`` (this
   leader's contender node) and the number of runs, in one transaction that checks the fence. A
   leader whose fence failed publishes nothing and steps down.
3. **Publish**: each run with the task id ``layout.backfill_task_id(root, entry, time)`` and the
   headers ``layout.backfill_headers`` (the worker guard claims it in a folder of its own, one per
   entry and UTC day), at most :attr:`Backfills.per_tick` runs a tick, so due runs are not held
   up; the tick comes back at once while some are left.
4. **Delete under the fence** once every run is published.

Guarantees: at-least-once publishing and, with the guard, exactly-once execution of each
backfilled run: a leader that dies or is deposed at any step leaves the request, and its successor
publishes the same runs with the same task ids; a backfill issued twice publishes the same ids
twice. A backfill does not touch the entry's run count, ``last_run_at`` or run history: the
schedule goes on as if it had not happened; a paused entry can be backfilled.

Not guaranteed: overlap policies and jitter do not apply to backfilled runs (an operator asked for
them all, now); the runs are published at once, not spread; a worker without the guard runs a
backfill issued twice twice.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from celery import beat

from beatleader.beat.planning import Backoff
from beatleader.beat.sources.runtimewatch import RunRequest
from beatleader.beat.state import StateStore
from beatleader.schedules.backfill import BackfillRequest, times_in
from beatleader.schedules.checks import DefinitionError, exc_line

logger = logging.getLogger("beatleader")

__all__ = ["Backfills"]


class BackfillHost(Protocol):
    """What :class:`Backfills` uses of its scheduler."""

    @property
    def runtime(self) -> Any: ...

    def _requested_entry(self, name: str) -> beat.ScheduleEntry | None: ...

    def _expired(self, request: RunRequest) -> bool: ...

    def _fence(self) -> tuple[str | None, StateStore | None]: ...

    def _fence_failed(self) -> None: ...

    def publish_backfill(self, entry: beat.ScheduleEntry, scheduled: datetime) -> str: ...

    def _report(self, key: str, kind: str, detail: str, level: int = ...) -> None: ...


@dataclass
class _Job:
    """A backfill this leader accepted: its entry, times, and how many are published."""

    entry: beat.ScheduleEntry
    times: list[datetime]
    published: int = 0


class Backfills:
    """The backfill requests of one scheduler (see the module docstring)."""

    #: Most runs of backfills published in one tick.
    per_tick = 100
    #: Seconds before a request whose publish or write failed is tried again (doubling, to 30 s).
    retry_first = 1.0

    def __init__(self, host: BackfillHost) -> None:
        self.host = host
        self._jobs: dict[str, _Job] = {}
        self._backoff = Backoff(self.retry_first, 30.0)

    def forget(self) -> None:
        """A new leadership: every request is checked and accepted again."""
        self._jobs.clear()
        self._backoff.clear()

    def step(self) -> bool:
        """Advance the oldest backfills by up to :attr:`per_tick` runs; whether some are left."""
        runtime = self.host.runtime
        if runtime is None or not runtime.backfills:
            if self._jobs:
                self._jobs.clear()
            return False
        listed = {request.path for request in runtime.backfills}
        self._jobs = {path: job for path, job in self._jobs.items() if path in listed}
        budget = self.per_tick
        now = time.monotonic()
        for request in list(runtime.backfills):
            if budget <= 0:
                return True
            if not self._backoff.ready(request.path, now):
                continue
            job = self._jobs.get(request.path) or self._accept(request)
            if job is None:
                continue
            budget -= self._publish(request, job, budget, now)
            if job.published == len(job.times):
                self._finish(request, job)
        return any(self._backoff.ready(path, now) for path in self._jobs)

    # -- the steps --------------------------------------------------------------------------------

    def _accept(self, request: RunRequest) -> _Job | None:
        """Steps 1 and 2; the job, or None (refused and deleted, waiting, or not leading)."""
        name = request.name
        try:
            if name is None:
                raise DefinitionError("its node is not named <entry>__run__<sequence>")
            wanted = BackfillRequest.decode(request.data)
        except DefinitionError as exc:
            return self._refuse(request, str(exc))  # always None: nothing to publish
        entry = self.host._requested_entry(name)
        if entry is None:
            if self.host._expired(request):
                return self._refuse(request, f"names {name!r}, which is no entry here")
            return None
        try:
            times = times_in(entry.schedule, wanted.start, wanted.end, wanted.limit)
        except Exception as exc:  # a user's schedule: this request only
            return self._refuse(request, f"the schedule of {name!r} cannot tell its times: "
                                f"{exc_line(exc)}")  # fmt: skip
        if len(times) > wanted.limit:
            return self._refuse(
                request,
                f"more than {wanted.limit:,} runs of {name!r} from {wanted.start.isoformat()} to "
                f"{wanted.end.isoformat()} (raise --max, or split the range)",
            )
        fence, store = self.host._fence()
        if fence is None or store is None:
            return None
        fields = json.loads(wanted.encode())
        fields.update(accepted_by=fence.rsplit("/", 1)[-1], runs=len(times))
        status, lost = store.annotate(fence, request.path, json.dumps(fields).encode())
        if lost:
            self.host._fence_failed()
            return None
        if status == "gone":
            self.host.runtime.forget_requests([request.path])
            return None
        if status != "written":
            self._failed(request, f"cannot be accepted: ZooKeeper refused it ({status})")
            return None
        logger.info(
            "beatleader: backfill request %s: %d run(s) of %r from %s to %s",
            request.node,
            len(times),
            name,
            wanted.start.isoformat(),
            wanted.end.isoformat(),
        )
        job = self._jobs[request.path] = _Job(entry, times)
        return job

    def _publish(self, request: RunRequest, job: _Job, budget: int, now: float) -> int:
        """Step 3, up to ``budget`` runs; returns how many were published."""
        count = 0
        while job.published < len(job.times) and count < budget:
            scheduled = job.times[job.published]
            try:
                self.host.publish_backfill(job.entry, scheduled)
            except Exception as exc:  # the broker: tried again after a backoff
                self._failed(request, f"publishing its run of {scheduled.isoformat()} failed: "
                             f"{exc_line(exc)}")  # fmt: skip
                break
            job.published += 1
            count += 1
        return count

    def _finish(self, request: RunRequest, job: _Job) -> None:
        """Step 4."""
        fence, store = self.host._fence()
        if fence is None or store is None:
            return
        gone, lost = store.discard(fence, [request.path])
        if lost:
            self.host._fence_failed()
            return
        if not gone:
            self._failed(request, "cannot be deleted after its runs were published")
            return
        self._jobs.pop(request.path, None)
        self.host.runtime.forget_requests(gone)
        logger.info(
            "beatleader: backfill request %s done: %d run(s) of %r published",
            request.node,
            len(job.times),
            job.entry.name,
        )

    def _refuse(self, request: RunRequest, why: str) -> _Job | None:
        """Report a request that cannot be carried out and delete it under the fence."""
        self.host._report(
            f"backfill:{request.node}",
            "backfill",
            f"backfill request {request.node!r} refused: {why}; deleted, nothing published",
        )
        fence, store = self.host._fence()
        if fence is None or store is None:
            return None
        gone, lost = store.discard(fence, [request.path])
        if lost:
            self.host._fence_failed()
        elif gone:
            self.host.runtime.forget_requests(gone)
        else:
            self._backoff.failed(request.path, time.monotonic())
        return None  # (typed as a job for the callers' one-line returns)

    def _failed(self, request: RunRequest, why: str) -> None:
        self.host._report(
            f"backfill:{request.node}",
            "backfill",
            f"backfill request {request.node!r}: {why}; tried again",
            logging.WARNING,
        )
        self._backoff.failed(request.path, time.monotonic())
