"""``beatleader.Scheduler``: celery beat's scheduler, sending only while elected, behind a fence.

Run it on every instance: ``celery -A proj beat -S beatleader.Scheduler``. The schedule is the
app's ordinary ``beat_schedule``; the run state of each entry lives in ZooKeeper (``state.py``).

One class, read top to bottom: celery's hooks, the takeover, the leader's pass (plan, commit,
publish), run-now requests, the entries that change while beat runs, the clock, the session. It
holds its parts instead of inheriting them: a :class:`~beatleader.beat.leadership.Leadership`
per session (client, contender and fence, peer check), a
:class:`~beatleader.beat.publishing.Publisher` (the outbox: publish, renew, give up, mark), its
entry sources (``beat/sources/``, built from :attr:`Scheduler.source_classes`) and their change
queue (``dynamic.py``); the pure decisions live in ``planning.py``. Configurations of it:
``beatleader.django.DatabaseScheduler`` adds a source (django-celery-beat's rows) and celery's
entry hooks for rows; ``EmbeddedBeat`` runs it unchanged in a thread.

The per-tick algorithm (``Scheduler.tick``; celery's ``Service`` calls it in a loop and sleeps for
the number of seconds it returns):

1. Not leading: wait on the election's leadership event, at most ``max_interval``, and return 0.
   A follower makes no ZooKeeper request while it waits.
2. Leading, but not yet for this leadership: read ZooKeeper's server time (the one clock), load
   and validate every entry's state, continue each entry from it (``planning.continuation``), put
   every run committed but not marked published into the **outbox**, rebuild the heap.
3. Publish the outbox runs whose due time has come. Pop every entry that is due within the
   **commit lead** (``planning.CommitLead``: the slowest of the latest commits, x 1.5), except
   entries whose previous run is still in the outbox (held until it is out: missed runs
   coalesce, as celery's do after a stop).
4. For each due entry: send it, or skip it past ``misfire_grace``. A run due ahead is planned on
   the clock of its due time (``last_run_at`` is the due time) and published no earlier.
5. Fenced commits (``StateStore.commit``, one per batch of 250) of: the due runs
   (``published=false``), the outbox runs that must be renewed before they may be published
   (inherited or stale), and ripe marks (``published=true`` for runs already out; usually they
   are superseded by the entry's next run and cost nothing).
6. After each batch's commit, publish every outbox run that is due and was committed by this
   leader less than ``publish_window_fraction`` x the session timeout ago (monotonic clock),
   with its deterministic task id and run headers; a run the broker refused stays in the outbox
   and is retried with backoff; a published run gets a mark.

Guarantees: **every committed run is published at least once** (by this leader, retrying, or by
its successor from the outbox: runs are never marked published before the broker accepted them),
with the same task id every time; no signal (SIGTERM/SIGINT) lands between commit and publish in
any of beatleader's threads; a paused ex-leader does not publish a run past the publish window
(its successor does); skew of the instances' clocks does not double or skip runs (the schedule
runs on ZooKeeper's server time), and a large skew or a time in the future is reported
(``Observer.problem``); one refused write does not block the others, and repeated failures back
off (exponential, bounded).

Kept by the leader's pass: a run is put in the outbox only once its state (``published=false``)
has committed; each batch of writes is published right after its commit, before the next batch
is sent; an entry whose write ZooKeeper refused is retried with backoff, the others go on; a
failed fence steps down, a conflict or an uncertain commit reloads the state. A run-now request
is consumed by the fenced commit of its run, so it runs once.

Not guaranteed: exactly-once *publication*: a crash after the publish and before its mark, a lost
broker confirm, or a paused leader whose window had not passed can publish a run twice, with the
same task id; ``beatleader.dedup.install(app)`` makes the workers execute it once. A run whose
publish "succeeded" into a broker that then loses the message is not republished. The batches
after a failed one are not tried in that tick (a reload or a new leader plans them); an entry
whose heap event is popped while its run is in the outbox waits for that run to leave it (missed
runs coalesce).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import heapq
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any, ClassVar

from celery import beat
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException

from beatleader._version import __version__
from beatleader.beat import sigmask
from beatleader.beat.backfill import Backfills
from beatleader.beat.catchup import ScheduleTiming
from beatleader.beat.dynamic import EntryChanges
from beatleader.beat.failures import PAUSED_REASON, FailureWatch, pause, pause_note
from beatleader.beat.leadership import Leadership
from beatleader.beat.overlap import OverlapGate, skipped
from beatleader.beat.planning import (
    Backoff,
    CommitLead,
    Pending,
    Run,
    ServerClock,
    continuation,
    remaining_of,
    utc_iso,
)
from beatleader.beat.publishing import Publisher, first_line, replaced
from beatleader.beat.sources import EntrySource
from beatleader.beat.sources.runtime import RuntimeSource
from beatleader.beat.sources.runtimewatch import RunRequest
from beatleader.beat.state import (
    CONNECTION_ERRORS,
    SESSION_ERRORS,
    CommitOutcome,
    StateStore,
    StoredState,
    Write,
)
from beatleader.config import ConfigError, Settings
from beatleader.election.leader import LeaderElection
from beatleader.observe import Observers
from beatleader.runs import records
from beatleader.schedules.describe import publish_schedule
from beatleader.schedules.policies import publish_options
from beatleader.schedules.types import cron_rules
from beatleader.zk import layout
from beatleader.zk.clocknode import clock_note
from beatleader.zk.layout import ContenderInfo, EntryState

logger = logging.getLogger("beatleader.scheduler")

ZOOKEEPER_ERRORS = CONNECTION_ERRORS


def safe_repr(value: Any) -> str:
    """``repr(value)``, or ``<TypeName>`` when that raises (a user's ``__repr__``)."""
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__qualname__}>"


class ServerClockApp:
    """The celery app as a schedule sees it under beatleader: ``now()`` is ZooKeeper's clock.

    Every other attribute is the app's own (``timezone``, ``conf``, ...). Set as a schedule's
    ``app`` by :meth:`Scheduler._on_server_clock`, as celery sets the scheduler's app there.
    """

    def __init__(self, app: Any, now: Any) -> None:
        self._app = app
        self._now = now

    def now(self) -> datetime:
        return self._now()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app, name)

    def __repr__(self) -> str:
        return f"<ServerClockApp of {self._app!r}>"


class Scheduler(beat.Scheduler):  # type: ignore[misc]
    """A celery beat scheduler that sends only while this instance leads; see the module doc."""

    #: Seconds to wait after a ZooKeeper error in the leader's tick (doubling up to the next).
    error_retry_delay = 0.5
    #: Longest wait after repeated ZooKeeper errors in the leader's tick.
    error_retry_max = 10.0

    #: Seconds between reads of ZooKeeper's server time while leading (a read waits, up to as
    #: long again, for a moment when no run falls due within the commit lead's ceiling).
    clock_probe_interval = 60.0
    #: Seconds before the next read when one was too slow to be precise.
    clock_probe_retry = 1.0
    #: Offsets to ZooKeeper's clock beyond this many seconds are reported (and corrected anyway).
    max_clock_skew = 30.0
    #: A stored ``last_run_at`` later than its own write by more than this is "in the future".
    future_tolerance = 2.0

    #: Seconds a tick asks celery to sleep before ``setup_schedule`` or when ``close`` ended the
    #: session under it (short; the next tick of a closed scheduler raises SystemExit).
    closed_tick_interval = 0.1

    #: Seconds ``close`` waits for the election thread to finish.
    close_timeout = 5.0
    #: Seconds ``close`` waits for a tick in another thread before it writes the pending marks
    #: (past it, it closes without them: the successor republishes those runs, same task ids).
    close_flush_timeout = 1.0

    #: Beat keeps no local schedule file: state lives in ZooKeeper, written on every run.
    sync_every = float("inf")

    #: A committed run is published only within this fraction of the session timeout after its
    #: commit (monotonic clock); later it is committed again first, or left to the successor.
    publish_window_fraction = 0.5
    #: First and longest delay between publish attempts of a run the broker refused.
    publish_retry_first = 0.25
    publish_retry_max = 5.0
    #: Seconds a published run's mark waits for its entry's next commit to carry it.
    mark_delay = 1.5

    #: Commit each run ahead of its due time and publish it at the due time, so that the fenced
    #: commit's latency is not part of every run's lateness (False: commit when due, then
    #: publish; docs/design.md, "The commit lead").
    commit_ahead = True
    #: The lead follows this quantile of the latest commits' latencies, times the margin.
    #: (1.0: the slowest of the latest 200; a lead longer than needed costs nothing: the run
    #: waits in the outbox, while one commit slower than the lead makes its run late.)
    commit_lead_quantile = 1.0
    commit_lead_margin = 1.5
    #: The lead before the first commit was measured, and its ceiling (never more than a quarter
    #: of the publish window), seconds.
    commit_lead_initial = 0.05
    commit_lead_max = 0.25

    #: First and longest delay before writing again an entry whose write ZooKeeper refused.
    entry_retry_first = 1.0
    entry_retry_max = 60.0
    #: Most run-now requests naming no entry deleted in one tick (a flood cannot stall it).
    discard_per_tick = 50
    #: Seconds (ZooKeeper's clock, from the request's creation) a run-now request naming no entry
    #: this leader knows is kept before it is deleted: in a rolling deploy, an instance of the new
    #: version may have the entry and lead next. A request whose node name is malformed: none.
    unknown_request_grace = 600.0

    #: Longest sleep of a leader's tick, so that changes reported by :meth:`update_entries` apply
    #: within it (a local check: no ZooKeeper request).
    change_poll_interval = 1.0
    #: The entry sources, each built with the scheduler (``beat/sources/``); later ones win a
    #: name both define. A subclass adds its own: ``(*Scheduler.source_classes, MySource)``.
    source_classes: ClassVar[tuple[Callable[[Any], EntrySource], ...]] = (RuntimeSource,)

    _heap: list[Any] | None
    old_schedulers: dict[str, Any] | None
    #: This session's leadership (None before the first ``setup_schedule``; kept, closed, after
    #: ``close`` until the next one).
    leadership: Leadership | None = None

    def __init__(
        self,
        app: Any,
        *args: Any,
        lazy: bool = False,
        beatleader_settings: Settings | None = None,
        beatleader_observers: Observers | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            self.settings = beatleader_settings or Settings.from_app(app)
        except ConfigError as exc:  # one line for the operator, no traceback
            raise SystemExit(f"beatleader: {exc}") from None
        #: Hooks for metrics and logs (:mod:`beatleader.observe`); add yours with ``.add()``.
        self.observers = beatleader_observers or Observers()
        self.leadership = None
        self._stored: dict[str, StoredState] = {}
        self._loaded_generation = 0
        self._owner_pid = os.getpid()
        self._closed = False
        #: Held while leading in a tick, and by ``close`` to write the marks (reentrant: celery
        #: calls ``close`` from its signal handler, in the middle of a tick).
        self._lead_lock = threading.RLock()
        window = self.settings.session_timeout * self.publish_window_fraction
        retry = (self.publish_retry_first, self.publish_retry_max)
        #: The outbox's part: publish, renew, give up, mark (``publishing.py``).
        self.publisher = Publisher(self, window, retry, self.mark_delay)
        #: How long before its due time a run is committed (``planning.CommitLead``).
        self.lead = CommitLead(
            min(self.commit_lead_max, window / 4),
            self.commit_lead_initial,
            self.commit_lead_quantile,
            self.commit_lead_margin,
        )
        #: Seconds the schedules' clock runs ahead of ZooKeeper's, while the tick looks ahead.
        self._ahead = 0.0
        self._reported: dict[str, str] = {}
        #: The overlap policies' part: skip or hold a run whose previous run runs (``overlap.py``).
        self.overlap = OverlapGate(self.settings.path, self._report)
        #: The pause-on-failure part: counts failed runs, pauses (``failures.py``).
        self.failures = FailureWatch(self.settings.path)
        #: The schedule policies' part: catch-up, jitter, start, end, max runs (``catchup.py``).
        self.timing = ScheduleTiming(self.overlap.policy, lambda: float(self.max_interval))
        #: Backfill requests: accepted under the fence, published, deleted (``backfill.py``).
        self.backfill = Backfills(self)
        self._entry_backoff = Backoff(self.entry_retry_first, self.entry_retry_max)
        self._max_seen: dict[str, int] = {}
        #: request node -> its creation time (epoch s), for the requests naming no entry here.
        self._unknown_since: dict[str, float] = {}
        self._changes = EntryChanges()
        self._static_names: frozenset[str] = frozenset()
        self._dynamic_names: set[str] = set()
        #: Paused static entries, out of the schedule, by name (the object put back on resume).
        self._paused_static: dict[str, beat.ScheduleEntry] = {}
        #: Which source each dynamic entry came from (a source that cannot say keeps its own).
        self._source_of: dict[str, int] = {}
        self.sources: list[EntrySource] = [make(self) for make in self.source_classes]
        runtime = [s for s in self.sources if isinstance(s, RuntimeSource)]
        #: The runtime entries' source (None in a subclass without one).
        self.runtime: RuntimeSource | None = runtime[0] if runtime else None
        self._error_backoff = Backoff(self.error_retry_delay, self.error_retry_max)
        self._clock = ServerClock()
        self._clock_app = ServerClockApp(app, self._schedule_now)
        self._next_probe = 0.0
        super().__init__(app, *args, lazy=lazy, **kwargs)

    # -- celery hooks -----------------------------------------------------------------------------

    def setup_schedule(self) -> None:
        """Read the static schedule and contend; a second call while open changes nothing.

        celery calls it once (from ``__init__``, unless ``lazy``); a call on an open scheduler
        keeps its session, contender node and schedule (the static schedule is fixed for a
        scheduler's life: its fingerprint is what instances compare). After :meth:`close` it
        opens a new session and contends again.
        """
        if self.leadership is not None and not self._closed:
            logger.debug("beatleader: setup_schedule on an open scheduler: nothing to do")
            return
        if self.leadership is None:  # the first time: the static schedule
            self._timezone = self.app.timezone  # read once: a lock-guarded property in celery
            self.merge_inplace(self.app.conf.beat_schedule)
            if self.settings.crontab_rules == "cron":
                cron_rules(self.schedule.values())  # a behaviour change: see CHANGELOG
            self.install_default_entries(self.schedule)
            self._freeze_static()
            if self.settings.metrics_port is not None:  # validated: prometheus_client is there
                from beatleader.observe import metrics
                from beatleader.runs import metrics as run_metrics

                with sigmask.blocked_in_new_threads():  # its HTTP server thread, if it starts one
                    metrics.install(self)
                run_metrics.watch(self)
        self._closed = False
        self._loaded_generation = 0
        self._connect()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass of the algorithm in the module docstring; returns seconds to sleep."""
        self._check_process()
        if self._closed:
            # close() runs at shutdown only (celery's SIGTERM handler, the end of its loop, an
            # embedded beat's stop). A celery beat whose handler had closed it was once seen
            # ticking on (SIGTERM just after a SIGCONT past the session, under load; celery 5.7's
            # sync() no longer sets the loop's shutdown flag): this ends the loop, as the handler
            # meant. celery's loop takes SystemExit as the end, whatever its version.
            raise SystemExit()
        election = self._election
        if election is None:
            return self.closed_tick_interval
        if not election.is_leader:
            election.wait_for_leadership(timeout=self.max_interval)
            return 0.0
        with self._lead_lock:
            if self._closed:
                return self.closed_tick_interval
            try:
                if election.generation != self._loaded_generation:
                    self._take_over(election.generation)
                else:
                    self._apply_changes()
                delay = self._capped(self._run_due())
            except ZOOKEEPER_ERRORS as exc:
                return self._zookeeper_error(exc)
        self._error_backoff.succeeded("tick")
        return delay

    def close(self) -> None:
        """Write pending marks, release leadership at once (close the session), close celery's."""
        if not self._closed:
            self._closed = True
            if self._lead_lock.acquire(timeout=self.close_flush_timeout):
                try:
                    self._publish_imminent()
                    self._flush_marks()
                finally:
                    self._lead_lock.release()
            self._disconnect()
        super().close()

    def _zookeeper_error(self, exc: Exception) -> float:
        if self._closed:  # close() ended the session under this tick
            return self.closed_tick_interval
        self._loaded_generation = 0  # reload state once we lead for sure again
        delay = self._error_backoff.failed("tick", time.monotonic())
        logger.warning(
            "beatleader: ZooKeeper error while leading (%r); not sending, retrying in %.1f s",
            exc,
            delay,
        )
        return delay

    def populate_heap(self, event_t: Any = beat.event_t, heapify: Any = heapq.heapify) -> None:
        """celery's, except that an entry whose ``is_due`` raises cannot stop the others.

        celery before 5.7 lets the exception escape (and the whole tick with it).
        """
        self._heap = []
        for entry in self.schedule.values():
            is_due, delay = self.safe_is_due(entry)
            self._heap.append(event_t(self._when(entry, 0 if is_due else delay) or 0, 5, entry))
        heapify(self._heap)

    @property
    def info(self) -> str:
        s = self.settings
        return (
            f"ZooKeeper {s.zk_hosts}{s.path} (session timeout {s.session_timeout:g} s, "
            f"identity {s.identity})"
        )

    # -- taking over ----------------------------------------------------------------------------

    def _take_over(self, generation: int) -> None:
        """Step 2: continue the schedule from the shared state."""
        assert self._store is not None
        self._probe_clock()
        self._prefetch_dynamic(generation)  # its reads overlap those of the run state
        stored = self._store.load()
        self.publisher.outbox.clear()
        self.overlap.forget()  # a run held in an earlier leadership: the next due run is planned
        self.failures.forget()
        self.backfill.forget()
        self._stored = stored
        for name, entry in self.schedule.items():
            self._on_server_clock(entry)
            if name in stored:
                self._continue(entry, stored[name])
            else:
                self._not_ahead(entry)
        self._load_dynamic(stored)
        for name, ordinal in self.publisher.marks.items():
            found = stored.get(name)
            state = found.state if found is not None else None
            if state is None or state.published or state.total_run_count != ordinal:
                self.publisher.marks.discard(name)
        self._heap = None
        self._loaded_generation = generation
        logger.info(
            "beatleader: leading; continuing %d of %d entries from shared state, %d run(s) to "
            "publish again",
            sum(name in stored for name in self.schedule),
            len(self.schedule),
            len(self.publisher.outbox),
        )

    def _continue(self, entry: beat.ScheduleEntry, stored: StoredState) -> None:
        name = entry.name
        found = continuation(stored, self._max_seen.get(name, 0), self.future_tolerance)
        if found.problem:
            kind = "entry-data" if stored.state is None else "entry-time"
            self._report(f"entry:{name}", kind, f"entry {name!r}: {found.problem}")
        if found.last_run_at is not None:
            entry.last_run_at = found.last_run_at.astimezone(self.app.timezone)
        entry.total_run_count = found.total_run_count
        self._see(name, found.total_run_count)
        if not found.published and self.publisher.marks.get(name) != found.total_run_count:
            pending = Pending(name, found.total_run_count, entry, incarnation=found.incarnation)
            if found.last_run_at is not None:  # committed ahead of a due time not reached yet
                ahead = found.last_run_at.timestamp() - self._server_epoch()
                if ahead > 0:
                    pending.due_at = time.monotonic() + min(ahead, self.future_tolerance)
            self.publisher.outbox.add(pending)

    def _see(self, name: str, ordinal: int) -> None:
        if ordinal > self._max_seen.get(name, 0):
            self._max_seen[name] = ordinal

    # -- the leader's pass (steps 3 to 6) ----------------------------------------------------------

    def _run_due(self) -> float:
        """Steps 3 to 6."""
        if self._heap is None or not self.schedules_equal(self.old_schedulers, self.schedule):
            for entry in self.schedule.values():
                self._on_server_clock(entry)
            self.old_schedulers = copy.copy(self.schedule)
            self.populate_heap()
        now = time.monotonic()
        if now >= self._next_probe and (
            self._clear_for(self.lead.ceiling, now)
            or now >= self._next_probe + self.clock_probe_interval  # never clear: probe anyway
        ):
            self._probe_clock()  # a write: not in the last moments before a publish
        broker_ready = self.publisher.broker_backoff.ready("broker", now)
        if broker_ready and self.publisher.outbox.publishable(now):
            with sigmask.deferred():  # the runs committed ahead whose due time has come: first
                self._publish_outbox()
        runs = [self._plan(*due) for due in self._pop_due()]
        runs = self._apply_policies(runs)
        runs += self._requested_runs({run.entry.name for run in runs})
        renewals = self.publisher.outbox.to_renew(now) if broker_ready else []
        marks = [
            (name, ordinal)
            for name, ordinal in self.publisher.marks.ripe(now)
            if self._entry_backoff.ready(name, now)
        ]
        if runs or renewals or marks:
            if any(run.send for run in runs):
                _ = self.producer  # connect to the broker before committing, not in the gap
            self._commit_and_publish(runs, renewals, marks)
        elif broker_ready and len(self.publisher.outbox):
            with sigmask.deferred():
                self._publish_outbox()
        if broker_ready and self.backfill.step():
            return 0.0  # more backfilled runs to publish: due runs go first, then these
        return self._time_to_next()

    def _clear_for(self, seconds: float, now: float) -> bool:
        """Whether no committed run falls due and no heap event is popped in ``seconds``."""
        if any(pending.due_at - now < seconds for pending in self.publisher.outbox.runs()):
            return False
        if not self._heap:
            return True
        when, _, entry = self._heap[0]
        self._on_server_clock(entry)
        return bool(when - self._when(entry, 0) - self._lead() >= seconds)

    def _lead(self) -> float:
        """Seconds ahead of its due time a run is committed now (0 without ``commit_ahead``)."""
        return self.lead.seconds if self.commit_ahead else 0.0

    def _pop_due(self) -> list[tuple[beat.ScheduleEntry, float, float, float]]:
        """Every heap event due within the commit lead whose entry agrees it is due by then.

        Each as ``(entry, next_time_to_run, ahead, lateness)``: ``ahead`` seconds until its due
        time (0: due already; the lead when its schedule cannot tell), ``lateness`` seconds since.
        """
        heap = self._heap
        assert heap is not None
        lead = self._lead()
        due: list[tuple[beat.ScheduleEntry, float]] = []
        not_yet: list[tuple[beat.ScheduleEntry, float]] = []
        popped: set[str] = set()
        self._ahead = lead  # the schedules see the time the lead reaches
        try:
            while heap:
                entry = heap[0][2]
                self._on_server_clock(entry)  # celery's ``next(entry)`` gives it the app's clock
                if heap[0][0] > self._when(entry, 0):
                    break
                heapq.heappop(heap)
                name = entry.name
                if self.schedule.get(name) is not entry or name in self.publisher.outbox:
                    continue  # a stale event, or held until its run is out (then queued again)
                if name in popped:
                    continue  # a second event of the same entry: one run per entry and tick
                popped.add(name)
                retry_at = self._entry_backoff.not_before(name)
                if retry_at is not None and retry_at > time.monotonic():
                    not_yet.append((entry, retry_at - time.monotonic()))  # its write failed
                    continue
                is_due, next_time_to_run = self.safe_is_due(entry)
                (due if is_due else not_yet).append((entry, next_time_to_run))
            for entry, delay in not_yet:
                heapq.heappush(heap, beat.event_t(self._when(entry, delay), 5, entry))
        finally:
            self._ahead = 0.0
        found = []
        for entry, delay in due:
            remaining = self.timing.remaining(entry)  # jitter, start: the policy's due time
            if remaining is None:
                remaining = remaining_of(entry)
            if remaining is None:  # is_due said "due by then", nothing says when: then
                found.append((entry, delay, lead, 0.0))
            else:
                found.append((entry, delay, min(max(remaining, 0.0), lead), max(-remaining, 0.0)))
        return found

    def _apply_policies(self, runs: list[Run]) -> list[Run]:
        """Step 4's run policies: pause on failure (``failures.py``), then overlap
        (``overlap.py``): blocked runs skipped or held; the held runs whose blocker ended, sent."""
        runs = [self._paused_run(run) or run for run in runs]
        runs, held = self.overlap.gate(self._zk, runs, self._stored)
        assert self._heap is not None
        for run in held:  # its entry is unchanged: due again at its next time, then skipped
            entry = self.schedule[run.entry.name]
            heapq.heappush(self._heap, beat.event_t(self._when(entry, run.delay), 5, entry))
        now = time.monotonic()
        for name, waited in self.overlap.released(self._zk, {run.entry.name for run in runs}):
            entry = self.schedule.get(name)
            if entry is None or name in self.publisher.outbox:
                continue  # removed or paused meanwhile, or its run is out already
            sent = next(entry)
            delay = self.safe_is_due(sent)[1]
            runs.append(Run(sent, delay, True, waited.lateness + now - waited.since))
            logger.info("beatleader: sending the held run of %r: its previous run ended", name)
        return runs

    def _paused_run(self, run: Run) -> Run | None:
        """The skip of ``run`` when its entry failed its last N runs and is paused now."""
        if not run.send or run.request is not None:
            return None
        limit = self.overlap.policy(run.entry).pause_after_failures
        if limit is None:
            return None
        name = run.entry.name
        try:
            failed = self.failures.failed_runs(self._zk, name, self._stored.get(name), limit)
        except ZOOKEEPER_ERRORS as exc:  # an ACL on its records, the connection: it runs
            logger.warning("beatleader: cannot read the runs of %r (%r); sending it", name, exc)
            return None
        if len(failed) < limit:
            return None
        runtime = name in self.runtime_definitions and name not in self._static_names
        if name not in self._static_names and not runtime:
            self._report(
                f"pause:{name}",
                "entry-paused",
                f"entry {name!r} failed its last {limit} runs but cannot pause itself (not a "
                "static or runtime entry: disable it where it is defined)",
            )
            return None
        note = pause_note(failed)
        try:
            pause(self._zk, self.settings.path, name, runtime, note)
        except ZOOKEEPER_ERRORS as exc:
            self._report(
                f"pause:{name}",
                "entry-paused",
                f"entry {name!r} failed its last {limit} runs; pausing it failed ({exc!r}): "
                "it goes on running",
            )
            return None
        self._report(f"pause:{name}", "entry-paused", f"entry {name!r} paused: {note['reason']}")
        self.failures.paused(name, self._stored.get(name), failed)
        return skipped(run, PAUSED_REASON)

    def _time_to_next(self) -> float:
        now = time.monotonic()
        waits = [float(self.max_interval)]
        held = self.overlap.next_check()
        if held is not None:
            waits.append(held)
        if self._heap:  # popped the commit lead before its time
            when, _, entry = self._heap[0]
            self._on_server_clock(entry)
            waits.append(max(when - self._when(entry, 0) - self._lead(), 0.0))
        outbox = self.publisher.outbox.next_attempt(now)
        if outbox is not None:
            broker = (self.publisher.broker_backoff.not_before("broker") or now) - now
            waits.append(max(outbox, broker, 0.0))
        marks = self.publisher.marks.next_ripe(now)
        if marks is not None:
            waits.append(marks)
        return min(waits)

    def _plan(self, entry: beat.ScheduleEntry, delay: float, ahead: float, lateness: float) -> Run:
        """Step 4: send this run, or skip it when it is later than the misfire grace; an entry
        with a catch-up or jitter policy is planned by it (``catchup.py``).

        A run ``ahead`` of its due time is planned on the clock of its due time: its
        ``last_run_at`` is the due time, and it is published then (``Run.due_at``).
        """
        grace = self.settings.misfire_grace
        due_at = time.monotonic() + ahead if ahead else 0.0
        self._ahead = ahead
        try:
            if self.timing.plans(entry, None if grace is None else lateness - grace):
                run = self.timing.plan(entry, delay, lateness)
            elif grace is not None and lateness > grace:
                logger.warning(
                    "beatleader: skipping %r: due %.1f s ago, more than misfire_grace %g s",
                    entry.name,
                    lateness,
                    grace,
                )
                skip = replaced(entry, last_run_at=entry.default_now())
                run = Run(skip, delay, False, lateness)
            else:
                run = Run(next(entry), delay, True, lateness)
        finally:
            self._ahead = 0.0
        return dataclasses.replace(run, due_at=due_at) if due_at and run.send else run

    def _write_for(self, run: Run) -> Write:
        stored = self._stored.get(run.entry.name)
        previous = stored.state if stored is not None else None
        last_task_id: str | None
        incarnation = (previous.incarnation if previous else None) or layout.new_incarnation()
        if run.send:
            ordinal = run.entry.total_run_count
            last_task_id, skipped = self._task_id(run.entry.name, ordinal, incarnation), 0
        else:  # a skip keeps the last sent task's id and counts the runs it skips
            last_task_id, skipped = (previous.last_task_id if previous else None), run.skips
        last_run_at = utc_iso(run.entry.last_run_at)
        state = EntryState(
            last_run_at=last_run_at,
            total_run_count=run.entry.total_run_count,
            last_task_id=last_task_id,
            written_by=self.settings.identity,
            skipped_count=(previous.skipped_count if previous else 0) + skipped,
            published=not run.send,
            incarnation=incarnation,
            recent=self._recent(run, previous, last_run_at),
        )
        version = stored.version if stored is not None else None
        return Write(run.entry.name, state, version, consume=run.request)

    def _recent(self, run: Run, previous: EntryState | None, last_run_at: str) -> tuple[Any, ...]:
        """The entry's leader records with this run's (``beatleader/runs/records.py``)."""
        size = self.settings.history_size
        if size == 0:
            return ()
        at = round(datetime.fromisoformat(last_run_at).timestamp(), 3)
        if run.send:
            record = [run.entry.total_run_count, at, records.SENT]
        else:
            record = [None, at, f"{records.SKIPPED}:{run.reason}"]
        # parsed items are well-shaped and bounded (``layout._recent``); own ones are made here
        kept = previous.recent[-size:] if previous else ()
        return (*kept, record)[-size:]

    def _commit_and_publish(
        self, runs: list[Run], renewals: list[Pending], marks: list[tuple[str, int]]
    ) -> None:
        """Steps 5 and 6, per batch: a fenced commit, then every publishable outbox run.

        Publishing each batch right after its commit keeps every run well inside its publish
        window however many runs are due at once.
        """
        assert self._store is not None and self._election is not None
        fence = self._election.node
        if fence is None:
            self._election.step_down("no contender node")
            return
        planned = {run.entry.name for run in runs}
        extra = [self.publisher.renew_write(p, self.publisher.too_late(p)) for p in renewals]
        for pending, write in zip(renewals, extra, strict=True):
            if write is None:  # nothing to renew from: never spin on it
                self.publisher.outbox.failed(pending.name, time.monotonic())
        extra += [self.publisher.mark_write(n, o) for n, o in marks if n not in planned]
        writes = [self._write_for(run) for run in runs] + [w for w in extra if w is not None]
        runs_by_name = {run.entry.name: run for run in runs}
        renewing = {p.name: p for p in renewals}
        total = CommitOutcome()
        size = self._store.max_ops_per_commit
        for first in range(0, len(writes), size):  # commit a batch, publish it, then the next
            chunk = writes[first : first + size]
            with sigmask.deferred():
                outcome = self._commit_chunk(fence, chunk)
                for write in chunk:
                    if write.name not in outcome.committed:
                        continue
                    if write.name in runs_by_name:
                        self._settle(runs_by_name[write.name], outcome.started)
                    elif write.name in renewing:
                        self.publisher.renewed(renewing[write.name], write, outcome.started)
                    else:
                        self.publisher.marks.discard(write.name)
                self._publish_outbox()
            total.merge(outcome)
            if outcome.lost_leadership or outcome.error:
                break  # the later batches were not tried: a reload or a new leader plans them
        self._after_commit(total, runs)

    def _commit_chunk(self, fence: str, chunk: list[Write]) -> CommitOutcome:
        assert self._store is not None
        started = time.monotonic()
        outcome = self._store.commit(fence, chunk)
        outcome.started = started
        if outcome.committed:
            latency = time.monotonic() - started
            self.lead.observe(latency)
            self.observers.committed(len(outcome.committed), latency)
        self._adopt(chunk, outcome)
        return outcome

    def _adopt(self, writes: list[Write], outcome: CommitOutcome) -> None:
        for write in writes:
            version = outcome.committed.get(write.name)
            if version is not None:
                mtime = outcome.mtimes.get(write.name, 0.0)
                self._stored[write.name] = StoredState(write.state, version, mtime)
                self._entry_backoff.succeeded(write.name)

    def _settle(self, run: Run, committed_at: float) -> None:
        """A run committed: adopt its entry; a send goes to the outbox, a skip back on the heap."""
        entry = run.entry
        if run.request is None or entry.name in self.schedule:  # a paused entry stays paused
            self.schedule[entry.name] = entry
        self.publisher.marks.discard(entry.name)  # the new state supersedes the previous run's mark
        self._see(entry.name, entry.total_run_count)
        if run.send:
            ordinal = entry.total_run_count
            stored = self._stored.get(entry.name)  # adopted from this very commit
            incarnation = stored.state.incarnation if stored and stored.state else None
            delay = run.delay if run.request is None else None  # an extra run: ask is_due
            pending = Pending(entry.name, ordinal, entry, run.lateness, committed_at, delay)
            pending.incarnation, pending.due_at = incarnation, run.due_at
            self.publisher.outbox.add(pending)
            return
        self.observers.skipped(entry.name, run.lateness)
        assert self._heap is not None
        heapq.heappush(self._heap, beat.event_t(self._when(entry, run.delay), 5, entry))

    def _after_commit(self, outcome: CommitOutcome, runs: list[Run]) -> None:
        """What a commit that was not wholly fine means for leadership, state and entries."""
        assert self._election is not None
        self._requests_settled(outcome, runs)
        if outcome.lost_leadership:
            self._election.step_down("the fence failed: own contender node is gone")
            return
        now = time.monotonic()
        by_name = {run.entry.name: run for run in runs}
        for name, why in outcome.failed.items():
            delay = self._entry_backoff.failed(name, now)
            self._report(
                f"write:{name}",
                "entry-write",
                f"ZooKeeper refused the state of entry {name!r} ({why}); the other entries go "
                f"on, this one is retried with backoff",
            )
            if name in by_name and by_name[name].request is None and self._heap is not None:
                entry = self.schedule[name]  # unchanged: the run was not committed
                heapq.heappush(self._heap, beat.event_t(self._when(entry, delay), 5, entry))
            elif name in self.publisher.outbox:
                self.publisher.outbox.failed(name, now)
        if outcome.conflicts:
            for name in outcome.conflicts:
                self._entry_backoff.failed(name, now)  # a writer racing us cannot spin the tick
            logger.warning("beatleader: %s written by someone else; reloading", outcome.conflicts)
            self._loaded_generation = 0
        if outcome.uncertain or outcome.error:
            logger.warning(
                "beatleader: the connection failed during a commit (%s); %d write(s) may or may "
                "not have committed: reloading, committed runs will be published from the state",
                outcome.error,
                len(outcome.uncertain),
            )
            self._loaded_generation = 0

    def _publish_outbox(self) -> None:
        """Publish what the outbox may publish now (a hook: tests pause a beat here)."""
        self.publisher.publish_outbox()

    def publish_run(
        self, entry: beat.ScheduleEntry, ordinal: int, incarnation: str | None = None
    ) -> str:
        """Publish run ``ordinal`` of ``entry`` with its task id and run headers; raise if not."""
        task_id = self._task_id(entry.name, ordinal, incarnation)
        run = layout.run_headers(self.settings.path, entry.name, ordinal, incarnation)
        logger.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        self._publish(entry, task_id, run)
        return task_id

    def publish_backfill(self, entry: beat.ScheduleEntry, scheduled: datetime) -> str:
        """Publish the backfilled run of ``entry`` scheduled at ``scheduled``; raise if not."""
        root = self.settings.path
        task_id = layout.backfill_task_id(root, entry.name, layout.backfill_time(scheduled))
        run = layout.backfill_headers(root, entry.name, scheduled)
        logger.info(
            "Scheduler: Sending backfilled task %s (%s) of %s",
            entry.name,
            entry.task,
            run[layout.HEADER_BACKFILL],
        )
        self._publish(entry, task_id, run)
        return task_id

    def _publish(
        self, entry: beat.ScheduleEntry, task_id: str, run: Mapping[str, str | int]
    ) -> None:
        message = replaced(entry)
        options = publish_options(entry.options)  # the run policies stay here
        headers = {**(options.get("headers") or {}), **run}
        message.options = {**options, "task_id": task_id, "headers": headers}
        self.apply_async(message, producer=self.producer, advance=False)

    def _fence(self) -> tuple[str | None, StateStore | None]:
        """This leader's fence (its contender node) and state store; None when not leading."""
        election = self._election
        return (election.node if election is not None else None), self._store

    def _fence_failed(self) -> None:
        assert self._election is not None
        self._election.step_down("the fence failed: own contender node is gone")

    def _task_id(self, name: str, ordinal: int, incarnation: str | None) -> str:
        return layout.run_task_id(self.settings.path, name, ordinal, incarnation)

    # -- run-now requests -------------------------------------------------------------------------

    def _requested_runs(self, planned: set[str]) -> list[Run]:
        """One extra run per requested entry not planned, not in the outbox, not backing off."""
        runtime = self.runtime
        if runtime is None or not runtime.requests:
            return []
        listed = {request.node for request in runtime.requests}
        self._unknown_since = {n: t for n, t in self._unknown_since.items() if n in listed}
        runs: list[Run] = []
        unknown: list[RunRequest] = []
        taken = set(planned)
        now = time.monotonic()
        for request in runtime.requests:
            name = request.name
            if name is not None and name in taken:
                continue  # one run per entry and commit: this one waits for the next tick
            entry = self._requested_entry(name) if name is not None else None
            if entry is None:
                unknown.append(request)
                continue
            taken.add(entry.name)
            if entry.name in self.publisher.outbox or not self._entry_backoff.ready(
                entry.name, now
            ):
                continue  # its previous run is not out yet, or its write failed lately
            extra = replaced(entry, total_run_count=entry.total_run_count + 1)
            runs.append(Run(extra, 0.0, True, 0.0, request=request.path))
            logger.info(
                "beatleader: run-now request %s: run %d of %r",
                request.node,
                extra.total_run_count,
                entry.name,
            )
        if unknown:
            self._discard_requests(unknown, now)
        return runs

    def _requested_entry(self, name: str) -> beat.ScheduleEntry | None:
        """The entry ``name`` as of its latest run: scheduled, paused or disabled; else None."""
        current = self.schedule.get(name)
        if current is not None:
            return current
        held = self._paused_static.get(name)
        if held is not None:
            entry = replaced(held)
        else:
            runtime = self.runtime
            definition = runtime.definitions.get(name) if runtime is not None else None
            made = runtime.make_entry(name, definition) if runtime and definition else None
            if made is None:
                return None
            entry = made
        self._on_server_clock(entry)
        if name in self.publisher.outbox:
            return entry  # held until that run is out (the caller checks)
        found = self._stored.get(name) or self._load_one(name)
        if found is not None:
            self._continue(entry, found)  # a committed, unpublished run goes to the outbox
        return entry

    def _expired(self, request: RunRequest) -> bool:
        """Whether ``request``, which names no entry here, has outlived its grace.

        Its creation time costs one read, once; a request gone meanwhile is forgotten.
        """
        if request.name is None:
            return True
        since = self._unknown_since.get(request.node)
        if since is None:
            assert self._zk is not None
            stat = self._zk.exists(request.path)
            if stat is None:
                if self.runtime is not None:
                    self.runtime.forget_requests([request.path])
                return False
            since = self._unknown_since[request.node] = stat.ctime / 1000.0
            logger.info(
                "beatleader: run-now request %s names %r, which is no static or runtime entry "
                "here; kept %g s from its creation for an instance that has it (a rolling "
                "deploy), then deleted",
                request.node,
                request.name,
                self.unknown_request_grace,
            )
        return self._server_epoch() - since >= self.unknown_request_grace

    def _discard_requests(self, requests: list[RunRequest], now: float) -> None:
        """Report and delete (fenced) requests that name no entry, once their grace is over."""
        election, store = self._election, self._store
        assert election is not None and store is not None
        fence = election.node
        due = [r for r in requests if self._entry_backoff.ready(("request", r.node), now)]
        due = [r for r in due if self._expired(r)][: self.discard_per_tick]
        if fence is None or not due:
            return
        for request in due:
            if request.name is None:
                why = f"is not named <entry>{layout.REQUEST_MARKER}<sequence>"
            else:
                why = (
                    f"names {request.name!r}, which is no static or runtime entry here "
                    f"(kept {self.unknown_request_grace:g} s)"
                )
            self._report(
                f"request:{request.node}",
                "run-request",
                f"run-now request {request.node!r} {why}; deleted without a run",
            )
        gone, lost = store.discard(fence, [r.path for r in due])
        if lost:
            election.step_down("the fence failed: own contender node is gone")
        for request in due:
            if request.path not in gone and not lost:
                self._entry_backoff.failed(("request", request.node), now)
        if self.runtime is not None:
            self.runtime.forget_requests(gone)
        for path in gone:
            self._unknown_since.pop(path.rsplit("/", 1)[1], None)

    def _requests_settled(self, outcome: CommitOutcome, runs: list[Run]) -> None:
        """Run-now requests whose run committed (or that were gone) are no longer pending."""
        done: set[str] = set()
        for run in runs:
            name = run.entry.name
            if run.request is None:
                continue
            if name in outcome.committed:
                done.add(run.request)
            elif name in outcome.gone:
                done.add(run.request)
                logger.info(
                    "beatleader: run-now request %s was gone before its run committed "
                    "(consumed or withdrawn); not run",
                    run.request,
                )
        if done and self.runtime is not None:
            self.runtime.forget_requests(done)

    # -- entries that change while beat runs (what dynamic.py promises) ---------------------------

    def dynamic_entries(self) -> Mapping[str, beat.ScheduleEntry]:
        """Every dynamic entry now, by name; read by the leader at each takeover.

        Each source's ``read_all``, later sources winning a name; a source that cannot say
        (None) keeps the entries it gave before.
        """
        found: dict[str, beat.ScheduleEntry] = {}
        owners: dict[str, int] = {}
        for number, source in enumerate(self.sources):
            entries = source.read_all()
            if entries is None:
                kept = [n for n, o in self._source_of.items() if o == number]
                entries = {n: self.schedule[n] for n in kept if n in self.schedule}
            found.update(entries)
            owners.update(dict.fromkeys(entries, number))
        self._source_of = owners
        return found

    def update_entries(self, changes: Mapping[str, beat.ScheduleEntry | None]) -> None:
        """Report changed entries (an entry: add or replace; None: remove); thread-safe."""
        self._changes.put(changes)

    def pause_static(self, names: Collection[str]) -> None:
        """Report the static entries paused now: the whole set (the others run); thread-safe."""
        self._changes.put_paused(names)

    @property
    def dynamic_names(self) -> frozenset[str]:
        """Names of the dynamic entries this leader schedules now."""
        return frozenset(self._dynamic_names)

    @property
    def static_names(self) -> frozenset[str]:
        """Names of the static (``beat_schedule``) entries, fixed at setup."""
        return self._static_names

    @property
    def runtime_definitions(self) -> dict[str, Any]:
        """The valid runtime definitions this leader knows now, by entry name (a copy)."""
        return dict(self.runtime.definitions) if self.runtime is not None else {}

    @property
    def run_requests(self) -> list[Any]:
        """The run-now requests this leader has not consumed yet, oldest first (a copy)."""
        return list(self.runtime.requests) if self.runtime is not None else []

    @property
    def paused_names(self) -> frozenset[str]:
        """Names of the static entries this leader holds paused now."""
        return frozenset(self._paused_static)

    def _freeze_static(self) -> None:
        """Called once the static schedule is set up: these names are not dynamic."""
        self._static_names = frozenset(self.schedule)

    def _prefetch_dynamic(self, generation: int) -> None:
        """At takeover, before the run state is read: each source may start its reads here."""
        for source in self.sources:
            source.prefetch(generation)

    def _load_dynamic(self, stored: dict[str, StoredState]) -> None:
        """At takeover: the full read replaces every dynamic entry and every queued change."""
        self._changes.take()
        self._changes.take_paused()
        for name, entry in self._paused_static.items():  # continued as the scheduled ones are
            if name in stored:
                self._continue(entry, stored[name])
        entries = dict(self.dynamic_entries())
        removed = {name: None for name in self._dynamic_names - set(entries)}
        self._apply({**removed, **entries}, stored)
        self._apply_paused()
        if entries or removed:
            logger.info(
                "beatleader: %d dynamic entries read at takeover (%d no longer defined)",
                len(entries),
                len(removed),
            )

    def _apply_changes(self) -> None:
        """Between takeovers: each source polls, then what :meth:`update_entries` queued applies."""
        for source in self.sources:
            source.poll()
        changes = self._changes.take()
        if changes:
            self._apply(changes, None)
        self._apply_paused()

    def _apply_paused(self) -> None:
        paused = self._changes.take_paused()
        if paused is None:
            return
        for name in sorted((paused & self._static_names) - set(self._paused_static)):
            entry = self.schedule.pop(name, None)  # its events on the heap are stale now
            if entry is None:
                continue
            self._paused_static[name] = entry
            if self.old_schedulers is not None:
                self.old_schedulers.pop(name, None)
            logger.info("beatleader: static entry %r paused (its run state is kept)", name)
        for name in sorted(set(self._paused_static) - paused):
            self._resume(name, self._paused_static.pop(name))

    def _resume(self, name: str, entry: beat.ScheduleEntry) -> None:
        found = self._stored.get(name)  # this leader's view of its latest run (a run-now's too)
        if found is not None:
            self._continue(entry, found)
        self._schedule(name, entry)
        logger.info("beatleader: static entry %r resumed", name)

    def _apply(
        self,
        changes: Mapping[str, beat.ScheduleEntry | None],
        stored: dict[str, StoredState] | None,
    ) -> None:
        # a takeover's full read logs one line (``_load_dynamic``), not one per entry
        level = logging.DEBUG if stored is not None else logging.INFO
        for name, entry in changes.items():
            if name in self._static_names:
                self._report(
                    f"dynamic:{name}",
                    "entry-clash",
                    f"a dynamic entry named {name!r} clashes with the static beat_schedule "
                    "entry of that name; the static entry is kept",
                )
            elif entry is None:
                self._remove_entry(name, level)
            else:
                self._put_entry(name, entry, stored, level)

    def _remove_entry(self, name: str, level: int = logging.INFO) -> None:
        self._dynamic_names.discard(name)
        self.schedule.pop(name, None)  # its events on the heap are stale now (identity check)
        if self.old_schedulers is not None:
            self.old_schedulers.pop(name, None)
        logger.log(level, "beatleader: entry %r removed (its run state is kept)", name)

    def _put_entry(
        self,
        name: str,
        entry: beat.ScheduleEntry,
        stored: dict[str, StoredState] | None,
        level: int = logging.INFO,
    ) -> None:
        entry.name = name
        current = self.schedule.get(name)
        if current is not None:  # a new object keeps the run state; old heap events go stale
            entry.last_run_at = current.last_run_at
            entry.total_run_count = current.total_run_count
        else:
            found = stored.get(name) if stored is not None else self._load_one(name)
            if found is not None:
                self._continue(entry, found)
            else:
                self._not_ahead(entry)
        self._dynamic_names.add(name)
        self._schedule(name, entry)
        logger.log(level, "beatleader: entry %r %s", name, "changed" if current else "added")

    def _schedule(self, name: str, entry: beat.ScheduleEntry) -> None:
        """Put ``entry`` in the schedule and on the heap (its run state already set)."""
        self._on_server_clock(entry)
        self.schedule[name] = entry
        if self.old_schedulers is not None:
            self.old_schedulers[name] = entry
        if self._heap is not None:
            is_due, delay = self.safe_is_due(entry)
            when = self._when(entry, 0 if is_due else delay)
            heapq.heappush(self._heap, beat.event_t(when, 5, entry))

    def _not_ahead(self, entry: beat.ScheduleEntry) -> None:
        """An entry that never ran: celery set its ``last_run_at`` from this machine's clock;
        one ahead of ZooKeeper's (a skewed machine) would hold its first run back that long (a
        crontab's run due meanwhile is lost), so it is ZooKeeper's now at most."""
        now = self.server_now()
        try:
            ahead = entry.last_run_at is not None and entry.last_run_at > now
        except TypeError:  # a naive time from a user's entry: left as it is
            return
        if ahead:
            entry.last_run_at = now

    def _load_one(self, name: str) -> StoredState | None:
        """The stored run state of one entry (one read), adopted."""
        assert self._store is not None
        found = self._store.load_one(name)
        if found is not None:
            self._stored[name] = found
        return found

    def _capped(self, delay: float) -> float:
        return min(delay, self.change_poll_interval)

    # -- problems and is_due ---------------------------------------------------------------------

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
            due, delay = self.timing.adjust(entry, due, delay)  # jitter, start, end, max runs
        except Exception as exc:
            self._report(
                f"is_due:{name}",
                "entry-schedule",
                f"cannot tell when {name!r} is due ({type(exc).__name__}: "
                f"{first_line(exc)}); trying again in {self.max_interval:g} s",
            )
            return False, float(self.max_interval)
        if f"is_due:{name}" in self._reported:
            del self._reported[f"is_due:{name}"]
            logger.info("beatleader: %r can tell when it is due again", name)
        return due, delay

    # -- the one clock ----------------------------------------------------------------------------

    def local_time(self) -> float:
        """This machine's wall clock, epoch seconds (a test subclass may skew it)."""
        return time.time()

    def server_now(self) -> datetime:
        """Now on ZooKeeper's server clock: the clock every schedule entry runs on."""
        return datetime.fromtimestamp(self._server_epoch(), self._timezone)

    def _schedule_now(self) -> datetime:
        """The schedules' now: ZooKeeper's, or the time the commit lead reaches while the tick
        plans ahead (``_pop_due``, ``_plan``)."""
        return datetime.fromtimestamp(self._server_epoch() + self._ahead, self._timezone)

    def _server_epoch(self) -> float:
        """Now on ZooKeeper's server clock, epoch seconds."""
        return self.local_time() + self._clock.offset

    def _on_server_clock(self, entry: beat.ScheduleEntry) -> None:
        """Let ``entry``'s schedule see ZooKeeper's clock, without copying or rebuilding it.

        A schedule asks ``app.now()`` when it has no ``nowfun`` (celery's ``BaseSchedule.now``),
        and celery itself sets ``schedule.app`` on every entry it makes: this sets it to the app
        as seen through the server clock (:class:`ServerClockApp`). A schedule with its own
        ``nowfun`` (or its own ``now``) keeps it, time zone and all. A schedule that refuses the
        attribute runs on its own clock.
        """
        schedule = entry.schedule
        if schedule is None or getattr(schedule, "_app", None) is self._clock_app:
            return
        try:
            schedule.app = self._clock_app
        except Exception:  # a schedule class of the user's that has no settable ``app``
            return

    def _probe_clock(self) -> None:
        assert self._store is not None
        self._next_probe = time.monotonic() + self.clock_probe_interval
        before = self.local_time()
        try:
            server = self._store.server_time(clock_note(self.settings.identity, before))
        except KazooException as exc:
            if isinstance(exc, SESSION_ERRORS):
                raise
            self._report(
                "clock-node",
                "clock",
                f"cannot write {layout.clock_path(self.settings.path)} to read ZooKeeper's time "
                f"({exc!r}); scheduling on the last known offset {self._clock.offset:+.3f} s",
            )
            return
        if not self._clock.sample(before, self.local_time(), server):
            self._next_probe = time.monotonic() + self.clock_probe_retry  # too slow: soon again
            return
        offset = self._clock.offset
        if abs(offset) > self.max_clock_skew:
            self._report(
                "clock",
                "clock-skew",
                f"this clock is {-offset:+.0f} s off ZooKeeper's server time (more than "
                f"{self.max_clock_skew:g} s); scheduling on the server's time",
            )

    # -- ZooKeeper session ----------------------------------------------------------------------

    def _connect(self) -> None:
        settings = self.settings
        info = ContenderInfo(
            identity=settings.identity,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            started_at=layout.utc_now_iso(),
            fingerprint=self.fingerprint(),
            app=self.app.main if isinstance(self.app.main, str) else None,
        )
        fingerprint, entries = info.fingerprint, list(self.schedule.values())

        def describe(client: KazooClient) -> None:
            publish_schedule(client, settings.path, fingerprint, entries)

        self.leadership = Leadership(settings, self.observers, info, describe)
        self.leadership.open()

    def _disconnect(self) -> None:
        if self.leadership is not None:
            self.leadership.close(self.close_timeout)

    def _publish_imminent(self) -> None:
        """On close: the runs committed ahead, published at their due time (at most the commit
        lead away) rather than left to the successor."""
        election, outbox = self._election, self.publisher.outbox
        now = time.monotonic()
        waits = [pending.due_at - now for pending in outbox.runs()]
        if not waits or election is None or not election.is_leader:
            return
        wait = max(waits)
        if wait > self.close_flush_timeout:
            return
        try:
            time.sleep(max(wait, 0.0))
            with sigmask.deferred():
                self._publish_outbox()
        except Exception:  # best effort: the successor publishes what is left
            logger.exception("beatleader: could not publish the runs committed ahead on close")

    def _flush_marks(self) -> None:
        """On close: write every pending mark (fenced), so a graceful handoff republishes none."""
        election, store = self._election, self._store
        if not self.publisher.marks or election is None or store is None or not election.is_leader:
            return
        fence = election.node
        writes = [self.publisher.mark_write(n, o) for n, o in self.publisher.marks.items()]
        try:
            if fence is not None:
                store.commit(fence, [w for w in writes if w is not None])
        except Exception:  # best effort: the successor republishes what is not marked
            logger.exception("beatleader: could not mark published runs on close")

    def _check_process(self) -> None:
        if os.getpid() != self._owner_pid:
            raise RuntimeError(
                "beatleader: this Scheduler was created in process "
                f"{self._owner_pid} and used in its forked child {os.getpid()}; a ZooKeeper "
                "session cannot cross a fork: create the scheduler after forking"
            )

    # -- public state for operators -----------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._election is not None and self._election.is_leader

    @property
    def zk_client(self) -> KazooClient | None:
        """This scheduler's ZooKeeper client (None before ``setup_schedule``)."""
        return self._zk

    def leading_generation(self) -> int | None:
        """The election generation while this instance leads, None otherwise."""
        election = self._election
        if election is None or not election.is_leader:
            return None
        return election.generation

    @property
    def zk_connected(self) -> bool:
        return self._zk is not None and bool(self._zk.connected)

    @property
    def clock_offset(self) -> float:
        """Seconds ZooKeeper's server clock is ahead of this instance's (0 until measured)."""
        return self._clock.offset

    def entry_done(self, name: str) -> bool:
        """Whether entry ``name``'s policy says it runs no more (``max_runs``, ``end_at``)."""
        entry = self.schedule.get(name)
        return entry is not None and self.timing.done(entry)

    def unpublished(self) -> dict[str, int]:
        """Entry name -> ordinal of every committed run not yet published by this leader."""
        return {
            name: p.ordinal
            for name in self.publisher.outbox.names()
            if (p := self.publisher.outbox.get(name))
        }

    def fingerprint(self) -> str:
        """A short hash of this instance's schedule; instances that differ have different ones.

        A part whose ``repr`` raises (a user's schedule class) counts by its type's name; the
        others hash as they always did, so versions agree on ordinary schedules.
        """
        digest = hashlib.sha256()
        for name in sorted(self.schedule):
            entry = self.schedule[name]
            parts = (name, entry.task, entry.schedule, entry.args, entry.kwargs)
            try:
                text = repr(parts)
            except Exception:
                text = repr(tuple(safe_repr(part) for part in parts))
            digest.update(text.encode())
        return digest.hexdigest()[:12]
