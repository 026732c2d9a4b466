"""``beatleader.Scheduler``: celery beat's scheduler, sending only while elected, behind a fence.

Run it on every instance: ``celery -A proj beat -S beatleader.Scheduler``. The schedule is the
app's ordinary ``beat_schedule``; the run state of each entry lives in ZooKeeper (``state.py``),
leadership comes from ``election.py``; the pure decisions live in ``planning.py``.

The per-tick algorithm (``Scheduler.tick``; celery's ``Service`` calls it in a loop and sleeps for
the number of seconds it returns):

1. Not leading: wait on the election's leadership event, at most ``max_interval``, and return 0.
   A follower makes no ZooKeeper request while it waits.
2. Leading, but not yet for this leadership: read ZooKeeper's server time (the one clock), load
   and validate every entry's state, continue each entry from it (``planning.continuation``), put
   every run committed but not marked published into the **outbox**, rebuild the heap.
3. Pop every entry that is due now, except entries whose previous run is still in the outbox
   (held until it is out: missed runs coalesce, as celery's do after a stop).
4. For each due entry: send it, or skip it past ``misfire_grace``.
5. Fenced commits (``StateStore.commit``, one per batch of 250) of: the due runs
   (``published=false``), the outbox runs that must be renewed before they may be published
   (inherited or stale), and ripe marks (``published=true`` for runs already out; usually they
   are superseded by the entry's next run and cost nothing).
6. After each batch's commit, publish every outbox run committed by this leader less than
   ``publish_window_fraction`` x the session timeout ago (monotonic clock), with its
   deterministic task id and run headers; a run the broker refused stays in the outbox and is
   retried with backoff; a published run gets a mark.

Guarantees: **every committed run is published at least once** (by this leader, retrying, or by
its successor from the outbox: runs are never marked published before the broker accepted them),
with the same task id every time; no signal (SIGTERM/SIGINT) lands between commit and publish in
any of beatleader's threads; a paused ex-leader does not publish a run past the publish window
(its successor does); skew of the instances' clocks does not double or skip runs (the schedule
runs on ZooKeeper's server time), and a large skew or a time in the future is reported
(``Observer.problem``); one refused write does not block the others, and repeated failures back
off (exponential, bounded).

Not guaranteed: exactly-once *publication*: a crash after the publish and before its mark, a lost
broker confirm, or a paused leader whose window had not passed can publish a run twice, with the
same task id; ``beatleader.dedup.install(app)`` makes the workers execute it once. A run whose
publish "succeeded" into a broker that then loses the message is not republished.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import socket
import threading
import time
from datetime import datetime
from typing import Any

from celery import beat
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException

from beatleader._version import __version__
from beatleader.beat import sigmask
from beatleader.beat.dynamic import DynamicScheduler
from beatleader.beat.leadership import Leadership
from beatleader.beat.planning import Backoff, Pending, ServerClock, continuation
from beatleader.beat.state import CONNECTION_ERRORS, SESSION_ERRORS, StoredState
from beatleader.config import ConfigError, Settings
from beatleader.observe import Observers
from beatleader.schedules.describe import publish_schedule
from beatleader.zk import layout
from beatleader.zk.clocknode import clock_note
from beatleader.zk.layout import ContenderInfo

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


class Scheduler(DynamicScheduler):
    """A celery beat scheduler that sends only while this instance leads; see the module doc."""

    #: Seconds to wait after a ZooKeeper error in the leader's tick (doubling up to the next).
    error_retry_delay = 0.5
    #: Longest wait after repeated ZooKeeper errors in the leader's tick.
    error_retry_max = 10.0

    #: Seconds between reads of ZooKeeper's server time while leading.
    clock_probe_interval = 60.0
    #: Seconds before the next read when one was too slow to be precise.
    clock_probe_retry = 1.0
    #: Offsets to ZooKeeper's clock beyond this many seconds are reported (and corrected anyway).
    max_clock_skew = 30.0
    #: A stored ``last_run_at`` later than its own write by more than this is "in the future".
    future_tolerance = 2.0

    #: Seconds a closed scheduler's tick asks celery to sleep (short, so an embedded loop ends).
    closed_tick_interval = 0.1

    #: Seconds ``close`` waits for the election thread to finish.
    close_timeout = 5.0
    #: Seconds ``close`` waits for a tick in another thread before it writes the pending marks
    #: (past it, it closes without them: the successor republishes those runs, same task ids).
    close_flush_timeout = 1.0

    #: Beat keeps no local schedule file: state lives in ZooKeeper, written on every run.
    sync_every = float("inf")

    _heap: list[Any] | None
    old_schedulers: dict[str, Any] | None

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
        self._init_leading(self.settings.session_timeout)
        self._init_dynamic()
        self._error_backoff = Backoff(self.error_retry_delay, self.error_retry_max)
        self._clock = ServerClock()
        self._clock_app = ServerClockApp(app, self.server_now)
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
            self.install_default_entries(self.schedule)
            self._freeze_static()
            if self.settings.metrics_port is not None:  # validated: prometheus_client is there
                from beatleader.observe import metrics

                with sigmask.blocked_in_new_threads():  # its HTTP server thread, if it starts one
                    metrics.install(self)
        self._closed = False
        self._loaded_generation = 0
        self._connect()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass of the algorithm in the module docstring; returns seconds to sleep."""
        self._check_process()
        election = self._election
        if election is None or self._closed:
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

    def unpublished(self) -> dict[str, int]:
        """Entry name -> ordinal of every committed run not yet published by this leader."""
        return {name: p.ordinal for name in self._outbox.names() if (p := self._outbox.get(name))}

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

    # -- the one clock ----------------------------------------------------------------------------

    def local_time(self) -> float:
        """This machine's wall clock, epoch seconds (a test subclass may skew it)."""
        return time.time()

    def server_now(self) -> datetime:
        """Now on ZooKeeper's server clock: the clock every schedule entry runs on."""
        return datetime.fromtimestamp(self._server_epoch(), self._timezone)

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

    def _flush_marks(self) -> None:
        """On close: write every pending mark (fenced), so a graceful handoff republishes none."""
        election, store = self._election, self._store
        if not self._marks or election is None or store is None or not election.is_leader:
            return
        fence = election.node
        writes = [self.publisher.mark_write(n, o) for n, o in self._marks.items()]
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

    # -- taking over ----------------------------------------------------------------------------

    def _take_over(self, generation: int) -> None:
        """Step 2: continue the schedule from the shared state."""
        assert self._store is not None
        self._probe_clock()
        self._prefetch_dynamic(generation)  # its reads overlap those of the run state
        stored = self._store.load()
        self._outbox.clear()
        self._stored = stored
        for name, entry in self.schedule.items():
            self._on_server_clock(entry)
            if name in stored:
                self._continue(entry, stored[name])
        self._load_dynamic(stored)
        for name, ordinal in self._marks.items():
            found = stored.get(name)
            state = found.state if found is not None else None
            if state is None or state.published or state.total_run_count != ordinal:
                self._marks.discard(name)
        self._heap = None
        self._loaded_generation = generation
        logger.info(
            "beatleader: leading; continuing %d of %d entries from shared state, %d run(s) to "
            "publish again",
            sum(name in stored for name in self.schedule),
            len(self.schedule),
            len(self._outbox),
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
        if not found.published and self._marks.get(name) != found.total_run_count:
            self._outbox.add(
                Pending(name, found.total_run_count, entry, incarnation=found.incarnation)
            )
