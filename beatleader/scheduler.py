"""``beatleader.Scheduler``: celery beat's scheduler, sending only while elected, behind a fence.

Run it on every instance: ``celery -A proj beat -S beatleader.Scheduler``. The schedule is the
app's ordinary ``beat_schedule``; the run state of each entry lives in ZooKeeper (``state.py``),
leadership comes from ``election.py``.

The per-tick algorithm (``Scheduler.tick``; celery's ``Service`` calls it in a loop and sleeps for
the number of seconds it returns):

1. Not leading: wait on the election's leadership event, at most ``max_interval``, and return 0.
   A follower makes no ZooKeeper request while it waits, and takes over the moment it is elected
   instead of after celery's sleep.
2. Leading, but not yet for this leadership: load every entry's state from ZooKeeper
   (last_run_at, total_run_count), apply it to the local entries, and rebuild the heap.
3. Pop every entry that is due now. None due: return the time to the next one.
4. For each due entry, decide: send it, or, when ``misfire_grace`` is set and the run is later
   than that, skip it (advance last_run_at without sending).
5. Commit the new state of all of them in one fenced transaction (``StateStore.commit``).
   Fence failed: step down, send nothing. Version conflict: send nothing, reload state.
6. Only then publish each run to be sent, with a deterministic task id derived from the root
   path, the entry name and the run ordinal, and push the entries back on the heap.

Commit first, then publish: a crash between the two loses one run, it never sends one twice.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import heapq
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from celery import beat
from celery.utils.time import maybe_make_aware
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError

from beatleader import layout
from beatleader._version import __version__
from beatleader.config import ConfigError, Settings
from beatleader.election import LeaderElection
from beatleader.layout import ContenderInfo, EntryState
from beatleader.observe import Observers
from beatleader.peers import PeerWatch
from beatleader.schedules import publish_schedule
from beatleader.state import StateStore, StoredState, Write
from beatleader.trust import make_scheduler_client, start_scheduler_client

logger = logging.getLogger(__name__)

ZOOKEEPER_ERRORS = (KazooException, KazooTimeoutError)


class Scheduler(beat.Scheduler):  # type: ignore[misc]
    """A celery beat scheduler that sends only while this instance leads; see the module doc."""

    #: Seconds to wait after a ZooKeeper error in the leader's tick before trying again.
    error_retry_delay = 0.5

    #: Seconds a closed scheduler's tick asks celery to sleep (short, so an embedded loop ends).
    closed_tick_interval = 0.1

    #: Seconds ``close`` waits for the election thread to finish.
    close_timeout = 5.0

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
        self._zk: KazooClient | None = None
        self._election: LeaderElection | None = None
        self._peers: PeerWatch | None = None
        self._store: StateStore | None = None
        self._stored: dict[str, StoredState] = {}
        self._loaded_generation = 0
        self._owner_pid = os.getpid()
        self._closed = False
        super().__init__(app, *args, lazy=lazy, **kwargs)

    # -- celery hooks -----------------------------------------------------------------------------

    def setup_schedule(self) -> None:
        self.merge_inplace(self.app.conf.beat_schedule)
        self.install_default_entries(self.schedule)
        if self.settings.metrics_port is not None:  # validated: prometheus_client is installed
            from beatleader import metrics

            metrics.install(self)
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
        try:
            if election.generation != self._loaded_generation:
                self._take_over(election.generation)
            return self._run_due()
        except ZOOKEEPER_ERRORS as exc:
            if self._closed:  # close() ended the session under this tick
                return self.closed_tick_interval
            logger.warning("beatleader: ZooKeeper error while leading (%r); not sending", exc)
            self._loaded_generation = 0  # reload state once we lead for sure again
            return self.error_retry_delay

    def close(self) -> None:
        """Release leadership at once (close the session), then close celery's resources."""
        if not self._closed:
            self._closed = True
            self._disconnect()
        super().close()

    def populate_heap(self, event_t: Any = beat.event_t, heapify: Any = heapq.heapify) -> None:
        """celery's, except that an entry whose ``is_due`` raises cannot stop the others.

        celery before 5.7 lets the exception escape (and the whole tick with it).
        """
        self._heap = []
        for entry in self.schedule.values():
            try:
                is_due, delay = entry.is_due()
            except Exception:
                logger.exception(
                    "beatleader: cannot tell when %r is due; trying again in %g s",
                    entry.name,
                    self.max_interval,
                )
                is_due, delay = False, self.max_interval
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
    def zk_connected(self) -> bool:
        return self._zk is not None and bool(self._zk.connected)

    def fingerprint(self) -> str:
        """A short hash of this instance's schedule; instances that differ have different ones."""
        digest = hashlib.sha256()
        for name in sorted(self.schedule):
            entry = self.schedule[name]
            digest.update(
                repr((name, entry.task, entry.schedule, entry.args, entry.kwargs)).encode()
            )
        return digest.hexdigest()[:12]

    # -- ZooKeeper session ----------------------------------------------------------------------

    def _connect(self) -> None:
        settings = self.settings
        self._zk = make_scheduler_client(settings)  # SystemExit on unusable TLS files
        info = ContenderInfo(
            identity=settings.identity,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            started_at=layout.utc_now_iso(),
            fingerprint=self.fingerprint(),
            app=self.app.main if isinstance(self.app.main, str) else None,
        )
        self._store = StateStore(self._zk, settings.path)
        client, fingerprint, entries = self._zk, info.fingerprint, list(self.schedule.values())
        election_path = layout.election_path(settings.path)
        self._election = election = LeaderElection(
            self._zk,
            election_path,
            info.encode(),
            prepare=lambda: publish_schedule(client, settings.path, fingerprint, entries),
            observer=self.observers,
        )
        self._peers = PeerWatch(
            self._zk, election_path, info, self.observers, lambda: election.node
        )
        start_scheduler_client(self._zk, settings)  # SystemExit on bad credentials or TLS
        self._election.start()
        self._peers.start()
        logger.info("beatleader: contending for %s as %s", settings.path, settings.identity)

    def _disconnect(self) -> None:
        election, client = self._election, self._zk
        if election is None or client is None:
            return
        election.stop()
        if self._peers is not None:
            self._peers.stop()
        with contextlib.suppress(*ZOOKEEPER_ERRORS):
            client.stop()  # ends the session: the contender node vanishes, the next one leads
        client.close()
        self.observers.connection_changed("CLOSED")  # the election's listener is gone by now
        election.join(self.close_timeout)
        if self._peers is not None:
            self._peers.join(self.close_timeout)
        logger.info("beatleader: released leadership and closed the ZooKeeper session")

    def _check_process(self) -> None:
        if os.getpid() != self._owner_pid:
            raise RuntimeError(
                "beatleader: this Scheduler was created in process "
                f"{self._owner_pid} and used in its forked child {os.getpid()}; a ZooKeeper "
                "session cannot cross a fork: create the scheduler after forking"
            )

    # -- leading --------------------------------------------------------------------------------

    def _take_over(self, generation: int) -> None:
        """Step 2: continue the schedule from the shared state."""
        assert self._store is not None
        stored = self._store.load()
        for name, entry in self.schedule.items():
            if name in stored:
                self._apply_stored(entry, stored[name])
        self._stored = stored
        self._heap = None
        self._loaded_generation = generation
        logger.info(
            "beatleader: leading; continuing %d of %d entries from shared state",
            sum(name in stored for name in self.schedule),
            len(self.schedule),
        )

    def _apply_stored(self, entry: beat.ScheduleEntry, stored: StoredState) -> None:
        state = stored.state
        if state is None:
            return
        if state.last_run_at:
            entry.last_run_at = datetime.fromisoformat(state.last_run_at).astimezone(
                self.app.timezone
            )
        entry.total_run_count = state.total_run_count

    def _run_due(self) -> float:
        """Steps 3 to 6."""
        if self._heap is None or not self.schedules_equal(self.old_schedulers, self.schedule):
            self.old_schedulers = copy.copy(self.schedule)
            self.populate_heap()
        runs = [self._plan(entry, delay) for entry, delay in self._pop_due()]
        if not runs:
            return self._time_to_next()
        assert self._store is not None and self._election is not None
        fence = self._election.node
        if fence is None:
            self._election.step_down("no contender node")
            return 0.0
        writes = [self._write_for(run) for run in runs]
        with _signals_deferred():
            started = time.monotonic()
            outcome = self._store.commit(fence, writes)
            if outcome.committed:
                self.observers.committed(len(outcome.committed), time.monotonic() - started)
            for run, write in zip(runs, writes, strict=True):
                if write.name in outcome.committed:
                    self._settle(run, write.state, outcome.committed[write.name])
        if outcome.lost_leadership:
            self._election.step_down("the fence failed: own contender node is gone")
        elif outcome.conflicts:
            logger.warning("beatleader: %s written by someone else; reloading", outcome.conflicts)
            self._loaded_generation = 0
        return 0.0

    def _pop_due(self) -> list[tuple[beat.ScheduleEntry, float]]:
        """Every heap event whose time has come and whose entry agrees it is due."""
        heap = self._heap
        assert heap is not None
        due: list[tuple[beat.ScheduleEntry, float]] = []
        not_yet: list[tuple[beat.ScheduleEntry, float]] = []
        while heap and heap[0][0] <= self._when(heap[0][2], 0):
            entry = heapq.heappop(heap)[2]
            try:
                is_due, next_time_to_run = self.is_due(entry)
            except Exception:  # one broken entry must not stop the others
                logger.exception(
                    "beatleader: cannot tell when %r is due; trying again in %g s",
                    entry.name,
                    self.max_interval,
                )
                is_due, next_time_to_run = False, self.max_interval
            (due if is_due else not_yet).append((entry, next_time_to_run))
        for entry, delay in not_yet:
            heapq.heappush(heap, beat.event_t(self._when(entry, delay), 5, entry))
        return due

    def _time_to_next(self) -> float:
        if not self._heap:
            return float(self.max_interval)
        when, _, entry = self._heap[0]
        return float(min(max(when - self._when(entry, 0), 0.0), self.max_interval))

    def _plan(self, entry: beat.ScheduleEntry, delay: float) -> _Run:
        """Step 4: send this run, or skip it when it is later than the misfire grace."""
        grace = self.settings.misfire_grace
        lateness = _lateness(entry)
        if grace is not None and lateness > grace:
            logger.warning(
                "beatleader: skipping %r: due %.1f s ago, more than misfire_grace %g s",
                entry.name,
                lateness,
                grace,
            )
            return _Run(
                self.Entry(**dict(entry, last_run_at=entry.default_now())), delay, False, lateness
            )
        return _Run(next(entry), delay, True, lateness)

    def _write_for(self, run: _Run) -> Write:
        stored = self._stored.get(run.entry.name)
        previous = stored.state if stored is not None else None
        last_task_id: str | None
        if run.send:
            last_task_id, skipped = self._task_id(run.entry), 0
        else:  # a skip keeps the last sent task's id and counts itself
            last_task_id, skipped = (previous.last_task_id if previous else None), 1
        state = EntryState(
            last_run_at=_utc_iso(run.entry.last_run_at),
            total_run_count=run.entry.total_run_count,
            last_task_id=last_task_id,
            written_by=self.settings.identity,
            skipped_count=(previous.skipped_count if previous else 0) + skipped,
        )
        return Write(run.entry.name, state, stored.version if stored is not None else None)

    def _settle(self, run: _Run, state: EntryState, version: int) -> None:
        """A run committed: adopt its entry, publish it when it is a send, re-queue it."""
        entry = run.entry
        self.schedule[entry.name] = entry
        self._stored[entry.name] = StoredState(state, version)
        if run.send:
            message = copy.copy(entry)
            task_id = self._task_id(entry)
            headers = {
                **(entry.options.get("headers") or {}),
                **layout.run_headers(self.settings.path, entry.name, entry.total_run_count),
            }
            message.options = {**entry.options, "task_id": task_id, "headers": headers}
            self.apply_entry(message, producer=self.producer)
            self.observers.sent(entry.name, task_id, run.lateness)
        else:
            self.observers.skipped(entry.name, run.lateness)
        assert self._heap is not None
        heapq.heappush(self._heap, beat.event_t(self._when(entry, run.delay), 5, entry))

    def _task_id(self, entry: beat.ScheduleEntry) -> str:
        return layout.run_task_id(self.settings.path, entry.name, entry.total_run_count)


@dataclass(frozen=True)
class _Run:
    """One due run: the entry as it will be after the run, its next delay, whether to send."""

    entry: beat.ScheduleEntry
    delay: float
    send: bool
    #: Seconds between the moment the run fell due and the moment it was planned.
    lateness: float = 0.0


def _lateness(entry: beat.ScheduleEntry) -> float:
    """Seconds since the run of ``entry`` fell due (0 when it cannot be told)."""
    try:
        remaining = entry.schedule.remaining_estimate(entry.last_run_at)
    except Exception:
        return 0.0
    return max(-float(remaining.total_seconds()), 0.0)


def _utc_iso(moment: datetime) -> str:
    return str(maybe_make_aware(moment).astimezone(timezone.utc).isoformat())


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGINT between commit and publish, so a stop cannot lose a committed run.

    Only the main thread receives signals in Python; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
