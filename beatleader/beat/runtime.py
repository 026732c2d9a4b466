"""Runtime entries on the leader: definitions, pauses and run-now requests from ZooKeeper.

What operators write with ``beatleader entry ...`` or :mod:`beatleader.entries.api` (the layout is
in
``layout.py``, the codec in ``definitions.py``), the leader applies here, through the seam of
``dynamic.py``:

* **Definitions** (``definitions/<name>``): at each takeover every one is read and validated
  (``runtimewatch.DefinitionWatch``: one listing and multi-reads of 500 nodes, sent before the
  run state is read so that both share one pipeline); while leading, ZooKeeper watches
  report changes and the tick reads only what changed, then hands the entries to
  :meth:`~beatleader.beat.dynamic.DynamicScheduler.update_entries`. A disabled definition is not
  scheduled; its run state is kept, as a removed one's is (``prune`` removes it). One-off
  definitions (``{"at": ...}``) run once, then their run state says they ran (``OneOff``).
* **Pauses** of static (``beat_schedule``) entries (``paused/<name>``) go to
  :meth:`~beatleader.beat.dynamic.DynamicScheduler.pause_static`.
* **Run-now requests** (``requests/<name>__run__<seq>``): the leader plans one extra run of the
  entry (static or runtime, scheduled, paused or disabled) with its next ordinal, and the commit
  of that run deletes the request in the same fenced transaction (``state.py``): the run is
  committed if and only if the request is consumed, so it runs once, and a request that no
  leader consumed is seen by the next one. The extra run leaves ``last_run_at`` as it was: the
  regular schedule (and a one-off that has not run yet) goes on unchanged. A request naming no
  entry is reported and deleted under the same fence.

Guarantees: a malformed, hostile or unreadable definition node is reported once (kind
``definition``, ``Observer.problem``) and ignored: the entry it would define is not scheduled, as
a takeover would not schedule it; it stops nothing else. Changes apply within
``change_poll_interval`` seconds of their watch firing; a change made while no instance leads is
read by the next takeover. Followers make no request for any of this.

Not guaranteed: the order in which changes of different entries apply; that a run-now request runs
before the entry's next regular run (it waits while the entry's previous run is being published).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from celery import beat
from kazoo.client import KazooClient

from beatleader.beat.dynamic import DynamicScheduler
from beatleader.beat.planning import Run
from beatleader.beat.publishing import replaced
from beatleader.beat.runtimewatch import DefinitionWatch, Reading, RunRequest
from beatleader.beat.state import CommitOutcome
from beatleader.schedules.definitions import Definition
from beatleader.zk import layout

logger = logging.getLogger("beatleader.scheduler")


class RuntimeScheduler(DynamicScheduler):
    """Adds the runtime entries of ZooKeeper to :class:`DynamicScheduler`; see the module doc."""

    #: Most requests naming no entry deleted in one tick (a flood of them cannot stall it).
    discard_per_tick = 50
    #: Seconds (ZooKeeper's clock, from the request's creation) a run-now request naming no entry
    #: this leader knows is kept before it is deleted: in a rolling deploy, an instance of the new
    #: version may have the entry and lead next. A request whose node name is malformed: none.
    unknown_request_grace = 600.0

    _zk: KazooClient | None

    def _init_runtime(self) -> None:
        self._watch: DefinitionWatch | None = None
        self._prefetched: Callable[[], Reading] | None = None
        #: Whether this leadership's takeover took the runtime entries (a subclass's
        #: ``dynamic_entries`` that does not call ``super()``'s takes none: nothing is followed).
        self._following = False
        self._definitions: dict[str, Definition] = {}
        self._requests: list[RunRequest] = []
        #: request node -> its creation time (epoch s), for the requests naming no entry here.
        self._unknown_since: dict[str, float] = {}

    @property
    def runtime_definitions(self) -> dict[str, Definition]:
        """The valid runtime definitions this leader knows now, by entry name (a copy)."""
        return dict(self._definitions)

    @property
    def run_requests(self) -> list[RunRequest]:
        """The run-now requests this leader has not consumed yet, oldest first (a copy)."""
        return list(self._requests)

    # -- definitions and pauses -----------------------------------------------------------------

    def _prefetch_dynamic(self, generation: int) -> None:
        self._following = False
        self._prefetched = self._definition_watch().start_load(generation)

    def dynamic_entries(self) -> Mapping[str, beat.ScheduleEntry]:
        """Every enabled, valid runtime definition (read from ZooKeeper, watches armed)."""
        finish, self._prefetched = self._prefetched, None
        if finish is None:  # not prefetched by this takeover
            election = self._election
            assert election is not None
            finish = self._definition_watch().start_load(election.generation)
        reading = finish()
        self._definitions = {}
        self._requests = []
        changes = self._take_reading(reading)
        self._following = True
        return {name: entry for name, entry in changes.items() if entry is not None}

    def _apply_changes(self) -> None:
        watch = self._watch
        if watch is not None and self._following:
            reading = watch.refresh()
            if reading:
                changes = self._take_reading(reading)
                if changes:
                    self.update_entries(changes)
        super()._apply_changes()

    def _definition_watch(self) -> DefinitionWatch:
        if self._watch is None:
            assert self._zk is not None
            self._watch = DefinitionWatch(self._zk, self.settings.path, self._leading_generation)
        return self._watch

    def _leading_generation(self) -> int | None:
        election = self._election
        if election is None or not election.is_leader:
            return None
        return election.generation

    def _take_reading(self, reading: Reading) -> dict[str, beat.ScheduleEntry | None]:
        """Adopt what was read; returns the entry changes it makes (None: not scheduled)."""
        for path, why in reading.unlisted.items():
            self._report(f"folder:{path}", "definition", f"{path} ignored: {why}")
        changes: dict[str, beat.ScheduleEntry | None] = {}
        for name, definition in reading.definitions.items():
            entry = self._take_definition(name, definition, reading.problems.get(name))
            if entry is not None or name not in self._static_names:
                changes[name] = entry  # a static name is refused (and reported) by the seam
        if reading.paused is not None:
            self.pause_static(reading.paused)
        if reading.requests is not None:
            self._requests = reading.requests
            listed = {request.node for request in reading.requests}
            self._unknown_since = {n: t for n, t in self._unknown_since.items() if n in listed}
        return changes

    def _take_definition(
        self, name: str, definition: Definition | None, problem: str | None
    ) -> beat.ScheduleEntry | None:
        key = f"definition:{name}"
        if problem is not None:
            self._report(key, "definition", f"runtime entry {name!r} ignored: {problem}")
        else:
            self._reported.pop(key, None)  # reported again if it breaks again
        if definition is None:
            self._definitions.pop(name, None)
            return None
        self._definitions[name] = definition
        return self._entry_of(name, definition)

    def _entry_of(self, name: str, definition: Definition | None) -> beat.ScheduleEntry | None:
        """The entry of an enabled definition, None when there is none to schedule."""
        if definition is None or not definition.enabled:
            return None
        return self._make_entry(name, definition)

    def _make_entry(self, name: str, definition: Definition) -> beat.ScheduleEntry | None:
        try:
            entry = definition.to_entry(self.app, name)
        except Exception as exc:  # e.g. a solar schedule without ephem: this one only
            self._report(
                f"definition:{name}", "definition", f"runtime entry {name!r} ignored: {exc}"
            )
            return None
        return entry

    # -- run-now requests -----------------------------------------------------------------------

    def _requested_runs(self, planned: set[str]) -> list[Run]:
        """One extra run per requested entry not planned, not in the outbox, not backing off."""
        if not self._requests:
            return []
        runs: list[Run] = []
        unknown: list[RunRequest] = []
        taken = set(planned)
        now = time.monotonic()
        for request in self._requests:
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
            definition = self._definitions.get(name)
            made = self._make_entry(name, definition) if definition is not None else None
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

    def _server_epoch(self) -> float:
        """Now on ZooKeeper's clock, epoch seconds (``Scheduler`` applies its measured offset)."""
        return time.time()

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
                self._requests = [r for r in self._requests if r.node != request.node]
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
        self._requests = [r for r in self._requests if r.path not in gone]
        for path in gone:
            self._unknown_since.pop(path.rsplit("/", 1)[1], None)

    def _after_commit(self, outcome: CommitOutcome, runs: list[Run]) -> None:
        super()._after_commit(outcome, runs)
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
        if done:
            self._requests = [r for r in self._requests if r.path not in done]
