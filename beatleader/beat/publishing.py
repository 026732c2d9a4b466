"""The outbox after a commit: publish, renew, give up, mark (step 6 and the writes it needs).

:class:`PublishingScheduler` is the base of :class:`beatleader.beat.leading.LeadingScheduler`, which
plans and commits (steps 3 to 5); this half decides what becomes of a run once its state
(``published=false``) has committed: published from the outbox within the publish window,
committed again (renewed) when it is older, given up past ``misfire_grace``, marked
``published=true`` once the broker accepted it, and its entry put back on the heap. The pure
decisions (outbox, marks, backoff) are in ``planning.py``; the commit is ``leading.py``'s.

Guarantees kept here: a run leaves the outbox only when the broker accepted it (``apply_async``
raised nothing), and only then gets a mark; only runs committed by this leader within the publish
window are published, and only while it leads (stepped down: the rest is the successor's); a
renewal or a mark is a write at the version this leader last read, committed through the fenced
commit like any other; a run given up past ``misfire_grace`` is recorded as done without being
published; every message carries its run's task id (``layout.run_task_id``) and run headers; a
broker connection error stops the pass and backs off the broker, any other error only that run.

Not guaranteed: exactly-once publication: a publish whose mark was never committed (a crash, a
lost commit) is published again by this leader or its successor, with the same task id
(``dedup.py`` makes the workers execute it once). Signals are not held here: the caller publishes
inside ``sigmask.deferred`` (``leading.py``).
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import time
from typing import Any

from celery import beat
from celery.utils.time import maybe_make_aware
from kazoo.client import KazooClient
from kombu.exceptions import OperationalError

from beatleader.beat.leadership import Leadership
from beatleader.beat.planning import Backoff, Marks, Outbox, Pending
from beatleader.beat.state import StateStore, StoredState, Write
from beatleader.config import Settings
from beatleader.election.leader import LeaderElection
from beatleader.observe import Observers
from beatleader.zk import layout

logger = logging.getLogger("beatleader.scheduler")


class PublishingScheduler(beat.Scheduler):  # type: ignore[misc]
    """The outbox's side of the tick; :class:`beatleader.Scheduler` is the class to use."""

    #: A committed run is published only within this fraction of the session timeout after its
    #: commit (monotonic clock); later it is committed again first, or left to the successor.
    publish_window_fraction = 0.5
    #: First and longest delay between publish attempts of a run the broker refused.
    publish_retry_first = 0.25
    publish_retry_max = 5.0
    #: Seconds a published run's mark waits for its entry's next commit to carry it.
    mark_delay = 1.5

    settings: Settings
    observers: Observers
    #: This session's leadership (None before the first ``setup_schedule``; kept, closed, after
    #: ``close`` until the next one).
    leadership: Leadership | None = None
    _stored: dict[str, StoredState]
    _heap: list[Any] | None

    def _init_publishing(self, session_timeout: float) -> None:
        window = session_timeout * self.publish_window_fraction
        self._outbox = Outbox(window, Backoff(self.publish_retry_first, self.publish_retry_max))
        self._marks = Marks(self.mark_delay)
        self._broker_backoff = Backoff(self.publish_retry_first, self.publish_retry_max)
        self._reported: dict[str, str] = {}

    @property
    def _election(self) -> LeaderElection | None:
        return self.leadership.election if self.leadership is not None else None

    @property
    def _store(self) -> StateStore | None:
        return self.leadership.store if self.leadership is not None else None

    @property
    def _zk(self) -> KazooClient | None:
        return self.leadership.client if self.leadership is not None else None

    def _report(self, key: str, kind: str, detail: str, level: int = logging.ERROR) -> None:
        """Log ``detail`` and tell the observers, once per change of ``detail`` under ``key``."""
        if self._reported.get(key) == detail:
            return
        self._reported[key] = detail
        logger.log(level, "beatleader: %s", detail)
        self.observers.problem(kind, detail)

    def _resolved(self, key: str) -> None:
        """What was reported under ``key`` is fine again: report it again if it breaks again."""
        self._reported.pop(key, None)

    def safe_is_due(self, entry: beat.ScheduleEntry) -> tuple[bool, float]:
        """``is_due(entry)`` as celery's beat reads it, contained to that entry.

        Every form celery accepts: a ``schedstate`` or any pair whose first item is true or
        false and whose second is a number of seconds (``int`` or ``float``) or ``None``
        ("ask again at ``max_interval``", as celery's tick does). Anything else, and any
        exception, is "not due, ask again in ``max_interval``": logged once per change of what
        went wrong and counted as a problem (``entry-schedule``), never raised; one broken
        entry does not stop the others.
        """
        self._on_server_clock(entry)
        name = getattr(entry, "name", None)
        try:
            is_due, next_time_to_run = self.is_due(entry)
            due = bool(is_due)
            delay = float(self.max_interval if next_time_to_run is None else next_time_to_run)
            if delay != delay:  # NaN: no time at all
                raise ValueError(f"is_due returned {next_time_to_run!r} seconds")
        except Exception as exc:
            self._report(
                f"is_due:{name}",
                "entry-schedule",
                f"cannot tell when {name!r} is due ({type(exc).__name__}: "
                f"{_first_line(exc)}); trying again in {self.max_interval:g} s",
            )
            return False, float(self.max_interval)
        if f"is_due:{name}" in self._reported:
            del self._reported[f"is_due:{name}"]
            logger.info("beatleader: %r can tell when it is due again", name)
        return due, delay

    def _on_server_clock(self, entry: beat.ScheduleEntry) -> None:
        """Let ``entry``'s schedule see ZooKeeper's clock (``Scheduler``'s); none here."""

    # -- the writes of the outbox ---------------------------------------------------------------

    def _renew_write(self, pending: Pending, abandon: bool = False) -> Write | None:
        """The same unpublished run, committed again: proves the fence before a late publish.

        ``abandon``: the run is later than ``misfire_grace``; it is given up as celery gives up a
        misfired run: recorded as done (``published=true``) without publishing it.
        """
        stored = self._stored.get(pending.name)
        if stored is None or stored.state is None:
            return None
        state = dataclasses.replace(
            stored.state, written_by=self.settings.identity, published=abandon
        )
        return Write(pending.name, state, stored.version)

    def _too_late(self, pending: Pending) -> bool:
        grace = self.settings.misfire_grace
        if grace is None or pending.entry.last_run_at is None:
            return False
        self._on_server_clock(pending.entry)
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

    def _mark_write(self, name: str, ordinal: int) -> Write | None:
        stored = self._stored.get(name)
        if stored is None or stored.state is None or stored.state.total_run_count != ordinal:
            self._marks.discard(name)
            return None
        state = dataclasses.replace(stored.state, published=True, written_by=self.settings.identity)
        return Write(name, state, stored.version)

    def _renewed(self, pending: Pending, write: Write, committed_at: float) -> None:
        if write.state.published:  # given up past misfire_grace
            self._outbox.published(pending.name)
            self._requeue(pending)
        else:
            self._outbox.renewed(pending.name, committed_at)

    # -- publishing -----------------------------------------------------------------------------

    def _publish_outbox(self) -> None:
        """Publish every outbox run this leader committed within the publish window."""
        if not self._broker_backoff.ready("broker", time.monotonic()):
            return
        election = self._election
        for pending in self._outbox.attempts_due(time.monotonic()):
            if election is None or not election.is_leader:
                return  # stepped down (resigned, suspended, fence failed): leave it to the next
            if not self._outbox.fresh(pending, time.monotonic()):
                logger.info(
                    "beatleader: run %d of %r is past its publish window (%.1f s after its "
                    "commit); it is committed again (fenced) before it is published",
                    pending.ordinal,
                    pending.name,
                    self._outbox.window,
                )
                continue
            try:
                task_id = self.publish_run(pending.entry, pending.ordinal, pending.incarnation)
            except Exception as exc:
                if not self._publish_failed(pending, exc):
                    return
                continue
            self._published(pending, task_id)

    def publish_run(
        self, entry: beat.ScheduleEntry, ordinal: int, incarnation: str | None = None
    ) -> str:
        """Publish run ``ordinal`` of ``entry`` with its task id and run headers; raise if not."""
        task_id = self._task_id(entry.name, ordinal, incarnation)
        message = replaced(entry)
        headers = {
            **(entry.options.get("headers") or {}),
            **layout.run_headers(self.settings.path, entry.name, ordinal, incarnation),
        }
        message.options = {**entry.options, "task_id": task_id, "headers": headers}
        logger.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        self.apply_async(message, producer=self.producer, advance=False)
        return task_id

    def _published(self, pending: Pending, task_id: str) -> None:
        now = time.monotonic()
        self._outbox.published(pending.name)
        self._broker_backoff.succeeded("broker")
        self._marks.add(pending.name, pending.ordinal, now)
        self.observers.sent(pending.name, task_id, pending.lateness)
        self._requeue(pending)

    def _requeue(self, pending: Pending) -> None:
        """An entry whose run left the outbox goes back on the heap."""
        entry, delay = pending.entry, pending.delay
        current = self.schedule.get(pending.name)
        if current is None or self._heap is None:
            return
        if current is not entry:  # changed while its run was out (``dynamic.py``)
            entry, delay = current, None
        if delay is None:
            is_due, next_time_to_run = self.safe_is_due(entry)
            delay = 0.0 if is_due else next_time_to_run
        heapq.heappush(self._heap, beat.event_t(self._when(entry, delay or 0.0), 5, entry))

    def _publish_failed(self, pending: Pending, exc: Exception) -> bool:
        """Back off; returns whether to go on with the other runs (False: the broker is down)."""
        now = time.monotonic()
        broker_down = self._is_broker_error(exc)
        delay = (self._broker_backoff if broker_down else self._outbox.retry).failed(
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
        self._report(
            f"publish:{pending.name}", "publish", f"publish failed: {exc}", logging.WARNING
        )
        return not broker_down

    def _is_broker_error(self, exc: BaseException) -> bool:
        errors = (OperationalError, ConnectionError, OSError, *self.connection.connection_errors)
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, errors):
                return True
            seen = seen.__cause__ or seen.__context__
        return False

    def _task_id(self, name: str, ordinal: int, incarnation: str | None) -> str:
        return layout.run_task_id(self.settings.path, name, ordinal, incarnation)


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


def _first_line(exc: BaseException, limit: int = 200) -> str:
    try:
        text = str(exc).strip()
    except Exception:
        text = ""
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
