"""The outbox after a commit: publish, renew, give up, mark (step 6 and the writes it needs).

:class:`Publisher` is the part of :class:`beatleader.Scheduler` that decides what becomes of a run
once its state (``published=false``) has committed: published from the outbox within the publish
window and never before its due time (a run committed ahead waits for it), committed again
(renewed) when it is older, given up past ``misfire_grace``, marked
``published=true`` once the broker accepted it, and its entry put back on the heap. It holds the
outbox, the marks and the broker's backoff; the scheduler (its host) plans and commits (steps 3
to 5), and its ``publish_run`` sends one message (the override point for a subclass). The pure
decisions (outbox, marks, backoff) are in ``planning.py``.

Guarantees kept here: a run leaves the outbox only when the broker accepted it (``apply_async``
raised nothing), and only then gets a mark; only runs committed by this leader within the publish
window are published, none before its due time, and only while it leads (stepped down: the rest
is the successor's); a renewal or a mark is a write at the version this leader last read,
committed through the fenced commit like any other; a run given up past ``misfire_grace`` is
recorded as done without being published; every message carries its run's task id
(``layout.run_task_id``) and run headers; a broker connection error stops the pass and backs off
the broker, any other error only that run.

Not guaranteed: exactly-once publication: a publish whose mark was never committed (a crash, a
lost commit) is published again by this leader or its successor, with the same task id
(``dedup.py`` makes the workers execute it once). Signals are not held here: the caller publishes
inside ``sigmask.deferred`` (``scheduler.py``).
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import time
from typing import Any, Protocol

from celery import beat
from celery.utils.time import maybe_make_aware
from kombu.exceptions import OperationalError

from beatleader.beat.planning import Backoff, Marks, Outbox, Pending
from beatleader.beat.state import StoredState, Write
from beatleader.config import Settings
from beatleader.election.leader import LeaderElection
from beatleader.observe import Observers

logger = logging.getLogger("beatleader.scheduler")


class PublishHost(Protocol):
    """What :class:`Publisher` uses of its scheduler."""

    settings: Settings
    observers: Observers
    connection: Any
    _stored: dict[str, StoredState]
    _heap: list[Any] | None

    @property
    def _election(self) -> LeaderElection | None: ...

    @property
    def schedule(self) -> dict[str, beat.ScheduleEntry]: ...

    def publish_run(
        self, entry: beat.ScheduleEntry, ordinal: int, incarnation: str | None = None
    ) -> str: ...

    def safe_is_due(self, entry: beat.ScheduleEntry) -> tuple[bool, float]: ...

    def _when(self, entry: beat.ScheduleEntry, next_time_to_run: float) -> float: ...

    def _on_server_clock(self, entry: beat.ScheduleEntry) -> None: ...

    def _report(self, key: str, kind: str, detail: str, level: int = ...) -> None: ...


class Publisher:
    """The outbox's side of the tick, a part of :class:`beatleader.Scheduler`; see the module doc.

    ``window``: a committed run is published only within this many seconds of its commit
    (monotonic clock); later it is committed again first, or left to the successor. ``retry``:
    first and longest delay between publish attempts of a run (or a broker) that failed.
    ``mark_delay``: seconds a published run's mark waits for its entry's next commit to carry it.
    """

    def __init__(
        self,
        host: PublishHost,
        window: float,
        retry: tuple[float, float],
        mark_delay: float,
    ) -> None:
        self.host = host
        self.outbox = Outbox(window, Backoff(*retry))
        self.marks = Marks(mark_delay)
        self.broker_backoff = Backoff(*retry)

    # -- the writes of the outbox ---------------------------------------------------------------

    def renew_write(self, pending: Pending, abandon: bool = False) -> Write | None:
        """The same unpublished run, committed again: proves the fence before a late publish.

        ``abandon``: the run is later than ``misfire_grace``; it is given up as celery gives up a
        misfired run: recorded as done (``published=true``) without publishing it.
        """
        stored = self.host._stored.get(pending.name)
        if stored is None or stored.state is None:
            return None
        state = dataclasses.replace(
            stored.state, written_by=self.host.settings.identity, published=abandon
        )
        return Write(pending.name, state, stored.version)

    def too_late(self, pending: Pending) -> bool:
        grace = self.host.settings.misfire_grace
        if grace is None or pending.entry.last_run_at is None:
            return False
        self.host._on_server_clock(pending.entry)
        late = (
            pending.entry.default_now() - maybe_make_aware(pending.entry.last_run_at)
        ).total_seconds()
        if late <= grace:
            return False
        logger.warning(
            "beatleader: giving up run %d of %r: committed %.1f s ago and not known to be "
            "published, more than misfire_grace %g s",
            pending.ordinal,
            pending.name,
            late,
            grace,
        )
        return True

    def mark_write(self, name: str, ordinal: int) -> Write | None:
        stored = self.host._stored.get(name)
        if stored is None or stored.state is None or stored.state.total_run_count != ordinal:
            self.marks.discard(name)
            return None
        identity = self.host.settings.identity
        state = dataclasses.replace(stored.state, published=True, written_by=identity)
        return Write(name, state, stored.version)

    def renewed(self, pending: Pending, write: Write, committed_at: float) -> None:
        if write.state.published:  # given up past misfire_grace
            self.outbox.published(pending.name)
            self.requeue(pending)
        else:
            self.outbox.renewed(pending.name, committed_at)

    # -- publishing -----------------------------------------------------------------------------

    def publish_outbox(self) -> None:
        """Publish every outbox run this leader committed within the publish window."""
        if not self.broker_backoff.ready("broker", time.monotonic()):
            return
        election = self.host._election
        for pending in self.outbox.attempts_due(time.monotonic()):
            if pending.due_at > time.monotonic():
                continue  # committed ahead: published at its due time (the next tick wakes then)
            if election is None or not election.is_leader:
                return  # stepped down (resigned, suspended, fence failed): leave it to the next
            if not self.outbox.fresh(pending, time.monotonic()):
                logger.info(
                    "beatleader: run %d of %r is past its publish window (%.1f s after its "
                    "commit); it is committed again (fenced) before it is published",
                    pending.ordinal,
                    pending.name,
                    self.outbox.window,
                )
                continue
            try:
                task_id = self.host.publish_run(pending.entry, pending.ordinal, pending.incarnation)
            except Exception as exc:
                if not self._publish_failed(pending, exc):
                    return
                continue
            self._published(pending, task_id)

    def _published(self, pending: Pending, task_id: str) -> None:
        now = time.monotonic()
        self.outbox.published(pending.name)
        self.broker_backoff.succeeded("broker")
        self.marks.add(pending.name, pending.ordinal, now)
        late = pending.lateness  # committed ahead: 0 when planned, plus what its publish waited
        if pending.due_at:
            late += max(now - pending.due_at, 0.0)
        self.host.observers.sent(pending.name, task_id, late)
        self.requeue(pending)

    def requeue(self, pending: Pending) -> None:
        """An entry whose run left the outbox goes back on the heap."""
        host = self.host
        entry, delay = pending.entry, pending.delay
        current = host.schedule.get(pending.name)
        if current is None or host._heap is None:
            return
        if current is not entry:  # changed while its run was out (``dynamic.py``)
            entry, delay = current, None
        if delay is None:
            is_due, next_time_to_run = host.safe_is_due(entry)
            delay = 0.0 if is_due else next_time_to_run
        host._on_server_clock(entry)  # the heap runs on ZooKeeper's clock
        heapq.heappush(host._heap, beat.event_t(host._when(entry, delay or 0.0), 5, entry))

    def _publish_failed(self, pending: Pending, exc: Exception) -> bool:
        """Back off; returns whether to go on with the other runs (False: the broker is down)."""
        now = time.monotonic()
        broker_down = self._is_broker_error(exc)
        delay = (self.broker_backoff if broker_down else self.outbox.retry).failed(
            "broker" if broker_down else pending.name, now
        )
        logger.warning(
            "beatleader: could not publish run %d of %r (%s); it stays committed and "
            "unpublished, next attempt in %.2f s",
            pending.ordinal,
            pending.name,
            exc,
            delay,
        )
        self.host._report(
            f"publish:{pending.name}", "publish", f"publish failed: {exc}", logging.WARNING
        )
        return not broker_down

    def _is_broker_error(self, exc: BaseException) -> bool:
        connection_errors = self.host.connection.connection_errors
        errors = (OperationalError, ConnectionError, OSError, *connection_errors)
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, errors):
                return True
            seen = seen.__cause__ or seen.__context__
        return False


def replaced(entry: beat.ScheduleEntry, **changes: Any) -> beat.ScheduleEntry:
    """A copy of ``entry`` with ``changes``, made without calling its class.

    ``copy.copy`` goes through ``__reduce__`` and ``Entry(**dict(entry))`` through ``__init__``;
    a user's ``Entry`` subclass need match neither (django-celery-beat's ``ModelEntry`` does
    not). The schedule object is shared, as celery's ``next(entry)`` shares it.
    """
    copied = object.__new__(type(entry))
    copied.__dict__.update(vars(entry))
    copied.__dict__.update(changes)
    return copied


def first_line(exc: BaseException, limit: int = 200) -> str:
    try:
        text = str(exc).strip()
    except Exception:
        text = ""
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
