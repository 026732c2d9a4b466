"""The leader's half of the tick: plan, commit, then publish from the outbox (steps 3 to 6).

:class:`LeadingScheduler` is the base of :class:`beatleader.Scheduler`, which adds the celery hooks,
the ZooKeeper session, the takeover and the clock; the algorithm and its guarantees are described
in ``scheduler.py``'s docstring, the pure decisions (outbox, marks, backoff) in ``planning.py``.
What becomes of a committed run (publish, renew, give up, mark) is its part's,
:class:`beatleader.beat.publishing.Publisher`; ``publish_run`` (one message) stays here, the
override point for a subclass.

Guarantees kept here: a run is put in the outbox only once its state (``published=false``) has
committed; a commit and the publishes after it run with SIGTERM/SIGINT held; each batch of writes
is published right after its commit, before the next batch is sent; a run older than the publish
window is committed again before it is published (its renewal joins the next commit); an entry
whose write ZooKeeper refused is retried with backoff, the others go on; a failed fence steps down,
a conflict or an uncertain commit reloads the state.

Not guaranteed: the batches after a failed one are not tried in that tick (a reload or a new leader
plans them); an entry whose heap event is popped while its run is in the outbox waits for that run
to leave it (missed runs coalesce).
"""

from __future__ import annotations

import copy
import heapq
import logging
import time
from typing import Any

from celery import beat
from kazoo.client import KazooClient

from beatleader.beat import sigmask
from beatleader.beat.leadership import Leadership
from beatleader.beat.planning import Backoff, Pending, Run, lateness_of, utc_iso
from beatleader.beat.publishing import Publisher, first_line, replaced
from beatleader.beat.sources.runtime import RuntimeSource
from beatleader.beat.sources.runtimewatch import RunRequest
from beatleader.beat.state import CommitOutcome, StateStore, StoredState, Write
from beatleader.config import Settings
from beatleader.election.leader import LeaderElection
from beatleader.observe import Observers
from beatleader.zk import layout
from beatleader.zk.layout import EntryState

logger = logging.getLogger("beatleader.scheduler")


class LeadingScheduler(beat.Scheduler):  # type: ignore[misc]
    """Steps 3 to 6 of the tick; :class:`beatleader.Scheduler` is the class to use."""

    #: A committed run is published only within this fraction of the session timeout after its
    #: commit (monotonic clock); later it is committed again first, or left to the successor.
    publish_window_fraction = 0.5
    #: First and longest delay between publish attempts of a run the broker refused.
    publish_retry_first = 0.25
    publish_retry_max = 5.0
    #: Seconds a published run's mark waits for its entry's next commit to carry it.
    mark_delay = 1.5

    #: First and longest delay before writing again an entry whose write ZooKeeper refused.
    entry_retry_first = 1.0
    entry_retry_max = 60.0
    #: Most run-now requests naming no entry deleted in one tick (a flood cannot stall it).
    discard_per_tick = 50
    #: Seconds (ZooKeeper's clock, from the request's creation) a run-now request naming no entry
    #: this leader knows is kept before it is deleted: in a rolling deploy, an instance of the new
    #: version may have the entry and lead next. A request whose node name is malformed: none.
    unknown_request_grace = 600.0

    _paused_static: dict[str, beat.ScheduleEntry]
    runtime: RuntimeSource | None
    _loaded_generation: int
    _next_probe: float
    old_schedulers: dict[str, Any] | None

    settings: Settings
    observers: Observers
    _stored: dict[str, StoredState]
    _heap: list[Any] | None
    #: This session's leadership (None before the first ``setup_schedule``; kept, closed, after
    #: ``close`` until the next one).
    leadership: Leadership | None = None

    def _init_leading(self, session_timeout: float) -> None:
        window = session_timeout * self.publish_window_fraction
        retry = (self.publish_retry_first, self.publish_retry_max)
        #: The outbox's part: publish, renew, give up, mark (``publishing.py``).
        self.publisher = Publisher(self, window, retry, self.mark_delay)
        self._outbox = self.publisher.outbox
        self._marks = self.publisher.marks
        self._broker_backoff = self.publisher.broker_backoff
        self._reported: dict[str, str] = {}
        self._entry_backoff = Backoff(self.entry_retry_first, self.entry_retry_max)
        self._max_seen: dict[str, int] = {}
        #: request node -> its creation time (epoch s), for the requests naming no entry here.
        self._unknown_since: dict[str, float] = {}

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
                f"{first_line(exc)}); trying again in {self.max_interval:g} s",
            )
            return False, float(self.max_interval)
        if f"is_due:{name}" in self._reported:
            del self._reported[f"is_due:{name}"]
            logger.info("beatleader: %r can tell when it is due again", name)
        return due, delay

    def _on_server_clock(self, entry: beat.ScheduleEntry) -> None:
        """Let ``entry``'s schedule see ZooKeeper's clock (``Scheduler``'s); none here."""

    def _probe_clock(self) -> None:
        raise NotImplementedError

    def _continue(self, entry: beat.ScheduleEntry, stored: StoredState) -> None:
        raise NotImplementedError

    def _load_one(self, name: str) -> StoredState | None:
        raise NotImplementedError

    def _server_epoch(self) -> float:
        """Now on ZooKeeper's clock, epoch seconds (``Scheduler`` applies its measured offset)."""
        return time.time()

    def _see(self, name: str, ordinal: int) -> None:
        if ordinal > self._max_seen.get(name, 0):
            self._max_seen[name] = ordinal

    # -- leading --------------------------------------------------------------------------------

    def _run_due(self) -> float:
        """Steps 3 to 6."""
        if self._heap is None or not self.schedules_equal(self.old_schedulers, self.schedule):
            for entry in self.schedule.values():
                self._on_server_clock(entry)
            self.old_schedulers = copy.copy(self.schedule)
            self.populate_heap()
        now = time.monotonic()
        if now >= self._next_probe:
            self._probe_clock()
        runs = [self._plan(entry, delay) for entry, delay in self._pop_due()]
        runs += self._requested_runs({run.entry.name for run in runs})
        broker_ready = self._broker_backoff.ready("broker", now)
        renewals = self._outbox.to_renew(now) if broker_ready else []
        marks = [
            (name, ordinal)
            for name, ordinal in self._marks.ripe(now)
            if self._entry_backoff.ready(name, now)
        ]
        if runs or renewals or marks:
            if any(run.send for run in runs):
                _ = self.producer  # connect to the broker before committing, not in the gap
            self._commit_and_publish(runs, renewals, marks)
        elif broker_ready and len(self._outbox):
            with sigmask.deferred():
                self._publish_outbox()
        return self._time_to_next()

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
            if entry.name in self._outbox or not self._entry_backoff.ready(entry.name, now):
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
        if name in self._outbox:
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

    def _pop_due(self) -> list[tuple[beat.ScheduleEntry, float]]:
        """Every heap event whose time has come and whose entry agrees it is due."""
        heap = self._heap
        assert heap is not None
        due: list[tuple[beat.ScheduleEntry, float]] = []
        not_yet: list[tuple[beat.ScheduleEntry, float]] = []
        popped: set[str] = set()
        while heap and heap[0][0] <= self._when(heap[0][2], 0):
            entry = heapq.heappop(heap)[2]
            if self.schedule.get(entry.name) is not entry or entry.name in self._outbox:
                continue  # a stale event, or held until its run is out (then queued again)
            if entry.name in popped:
                continue  # a second event of the same entry: one run per entry and tick
            popped.add(entry.name)
            retry_at = self._entry_backoff.not_before(entry.name)
            if retry_at is not None and retry_at > time.monotonic():
                not_yet.append((entry, retry_at - time.monotonic()))  # its write failed lately
                continue
            is_due, next_time_to_run = self.safe_is_due(entry)
            (due if is_due else not_yet).append((entry, next_time_to_run))
        for entry, delay in not_yet:
            heapq.heappush(heap, beat.event_t(self._when(entry, delay), 5, entry))
        return due

    def _time_to_next(self) -> float:
        now = time.monotonic()
        waits = [float(self.max_interval)]
        if self._heap:
            when, _, entry = self._heap[0]
            waits.append(max(when - self._when(entry, 0), 0.0))
        outbox = self._outbox.next_attempt(now)
        if outbox is not None:
            broker = (self._broker_backoff.not_before("broker") or now) - now
            waits.append(max(outbox, broker, 0.0))
        marks = self._marks.next_ripe(now)
        if marks is not None:
            waits.append(marks)
        return min(waits)

    def _plan(self, entry: beat.ScheduleEntry, delay: float) -> Run:
        """Step 4: send this run, or skip it when it is later than the misfire grace."""
        grace = self.settings.misfire_grace
        lateness = lateness_of(entry)
        if grace is not None and lateness > grace:
            logger.warning(
                "beatleader: skipping %r: due %.1f s ago, more than misfire_grace %g s",
                entry.name,
                lateness,
                grace,
            )
            return Run(replaced(entry, last_run_at=entry.default_now()), delay, False, lateness)
        return Run(next(entry), delay, True, lateness)

    def _write_for(self, run: Run) -> Write:
        stored = self._stored.get(run.entry.name)
        previous = stored.state if stored is not None else None
        last_task_id: str | None
        incarnation = (previous.incarnation if previous else None) or layout.new_incarnation()
        if run.send:
            ordinal = run.entry.total_run_count
            last_task_id, skipped = self._task_id(run.entry.name, ordinal, incarnation), 0
        else:  # a skip keeps the last sent task's id and counts itself
            last_task_id, skipped = (previous.last_task_id if previous else None), 1
        state = EntryState(
            last_run_at=utc_iso(run.entry.last_run_at),
            total_run_count=run.entry.total_run_count,
            last_task_id=last_task_id,
            written_by=self.settings.identity,
            skipped_count=(previous.skipped_count if previous else 0) + skipped,
            published=not run.send,
            incarnation=incarnation,
        )
        version = stored.version if stored is not None else None
        return Write(run.entry.name, state, version, consume=run.request)

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
                self._outbox.failed(pending.name, time.monotonic())
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
                        self._marks.discard(write.name)
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
            self.observers.committed(len(outcome.committed), time.monotonic() - started)
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
        self._marks.discard(entry.name)  # the new state supersedes the previous run's mark
        self._see(entry.name, entry.total_run_count)
        if run.send:
            ordinal = entry.total_run_count
            stored = self._stored.get(entry.name)  # adopted from this very commit
            incarnation = stored.state.incarnation if stored and stored.state else None
            delay = run.delay if run.request is None else None  # an extra run: ask is_due
            pending = Pending(
                entry.name, ordinal, entry, run.lateness, committed_at, delay, incarnation
            )
            self._outbox.add(pending)
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
            elif name in self._outbox:
                self._outbox.failed(name, now)
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

    def _publish_outbox(self) -> None:
        """Publish what the outbox may publish now (a hook: tests pause a beat here)."""
        self.publisher.publish_outbox()

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

    def _task_id(self, name: str, ordinal: int, incarnation: str | None) -> str:
        return layout.run_task_id(self.settings.path, name, ordinal, incarnation)
