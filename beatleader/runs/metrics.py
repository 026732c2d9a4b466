"""Per-entry health as Prometheus metrics, read by the leader when scraped (prometheus extra).

The scheduler installs :func:`watch` when its metrics are on (``beatleader_metrics_port``, or
``EmbeddedBeat(metrics_registry=...)``). Every series has the labels ``path`` (the app's root
znode) and ``entry``; only the instance that leads exports them:

=================================================  ============================================
``beatleader_runs_total{outcome}``                 finished runs this process counted while
                                                   leading: ``succeeded``, ``failed`` (a worker
                                                   guard's final marker) and ``skipped`` (the
                                                   leader's own skip records)
``beatleader_run_duration_seconds`` (histogram)    the task body's duration, once per counted
                                                   ``succeeded`` or ``failed`` run with one
``beatleader_entry_running``                       1 while a claim exists for the entry's newest
                                                   run (a worker executes it), else 0
``beatleader_last_success_timestamp_seconds``      ZooKeeper's time (the marker's ``mtime``) the
                                                   newest succeeded run seen finished
``beatleader_entry_period_seconds``                the interval of an ``every`` entry (absent for
                                                   crontab and custom schedules, and for an entry
                                                   its policy ended: ``max_runs``, ``end_at``,
                                                   so the overdue alert does not fire)
=================================================  ============================================

Nothing is computed in the beat loop: a scrape reads, for every entry of the leader's schedule
that has run state, its ``dedup/`` folder's listing (pipelined ``get_children_async``: one request
per entry), then the markers that appeared since the previous scrape (one multi-read, one node per
newly finished run) and again, each scrape, those still ``retrying`` (their final outcome
overwrites them). The entries' incarnations and skip records come from the leader's memory (the
state it committed): no read. An ``allow`` entry costs the leader nothing between scrapes.

Counting: a marker is counted once per process, when a scrape first sees it final. **The first
scrape after this process takes over leadership counts nothing**: it takes the markers that exist
as already counted, and initialises ``last_success_timestamp_seconds`` from the newest
:data:`RunCollector.baseline_reads` of them; the previous leader counted them (``sum()`` over
instances does not count a run twice, except one that finished between the old leader's last
scrape and the takeover, counted by neither). An entry that first gets run state later (a new
runtime entry) has every run counted.

Guarantees: nothing in ZooKeeper (garbage bytes, deep or huge JSON, wrong types, odd child names,
a folder this reader may not read) makes a scrape raise: a failure reading one entry leaves out
its ``entry_running`` sample for that scrape, logs one WARNING per distinct failure (DEBUG after),
and the other entries are exported. A marker that is not a final outcome the reader can tell
(unreadable data) is taken as seen and never counted. Work per scrape and entry is bounded: at most
:data:`RunCollector.max_reads` marker reads (the newest; older new ones are taken as seen without
being counted, and logged).

Not guaranteed: a run whose marker the worker guard pruned before a scrape saw it is not counted
(scrape more often than ``beatleader_history_size`` runs finish); nor a skip record pushed out of
the leader's ``recent`` (the newest ``beatleader_history_size``) between two scrapes; a run executed
without the guard (it writes no marker) is never counted; an ``allow`` entry's older run still
running while a newer one has finished does not show as running; the counters are per process
(use ``increase()``) and vanish when the process stops leading.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from kazoo.exceptions import NoAuthError, NoNodeError
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from beatleader.config import Settings
from beatleader.runs.records import SKIPPED, leader_record, number_or_none, run_ordinals
from beatleader.zk import layout
from beatleader.zk.multiread import read_nodes

__all__ = ["DURATION_BUCKETS", "METRIC_NAMES", "RunCollector", "watch"]

logger = logging.getLogger("beatleader.metrics")

#: Buckets of ``beatleader_run_duration_seconds``: a quick task to an hour-long batch job.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

#: Every metric name this module exports (as Prometheus sees them: a histogram's three series).
METRIC_NAMES = (
    "beatleader_runs_total",
    "beatleader_run_duration_seconds_bucket",
    "beatleader_run_duration_seconds_count",
    "beatleader_run_duration_seconds_sum",
    "beatleader_entry_running",
    "beatleader_last_success_timestamp_seconds",
    "beatleader_entry_period_seconds",
)

#: Final marker states (``worker/markers.py``) as ``outcome`` labels; ``retrying`` is not final.
_FINAL = {"done": "succeeded", "failed": "failed"}
_RETRYING = "retrying"


class Scheduler(Protocol):
    """What the collector reads of a scheduler (:class:`beatleader.Scheduler` is one)."""

    settings: Settings

    @property
    def zk_client(self) -> Any: ...

    @property
    def schedule(self) -> Any: ...

    def leading_generation(self) -> int | None: ...


@dataclass
class _Series:
    """What one entry of one path exports (kept across incarnations and leaderships)."""

    #: Every outcome from the first scrape (at 0), so that ``increase()`` sees the first run.
    counts: dict[str, int] = field(
        default_factory=lambda: {"succeeded": 0, "failed": 0, SKIPPED: 0}
    )
    #: Non-cumulative count per bucket of DURATION_BUCKETS, the last one for +Inf.
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0
    last_success: float | None = None
    #: ZooKeeper time of the newest skip record counted.
    skip_mark: float = -math.inf

    def observe(self, outcome: str, duration: float | None) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if duration is not None and duration >= 0:
            self.buckets[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
            self.duration_sum += duration

    def succeeded_at(self, when: float) -> None:
        if self.last_success is None or when > self.last_success:
            self.last_success = when


@dataclass
class _Tracker:
    """Which markers of one incarnation's folder this process has seen (under one leadership)."""

    incarnation: str | None
    #: Ordinals of markers already counted (or taken as counted): a subset of the last listing.
    seen: set[int] = field(default_factory=set)
    #: True until the first scrape of this tracker took the existing markers as counted.
    baseline: bool = False


@dataclass
class _PathState:
    #: (id of the leading scheduler, its election generation) the trackers belong to.
    lead: tuple[int, int] | None = None
    trackers: dict[str, _Tracker] = field(default_factory=dict)
    series: dict[str, _Series] = field(default_factory=dict)


class RunCollector:
    """The per-entry health metrics of the schedulers it watches (see the module doc)."""

    #: Markers read, newest first, on the first scrape after a takeover (for last_success).
    baseline_reads = 20
    #: Most marker reads per entry per scrape.
    max_reads = 1000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._schedulers: weakref.WeakValueDictionary[int, Scheduler] = (
            weakref.WeakValueDictionary()
        )
        self._paths: dict[int, str] = {}
        self._state: dict[str, _PathState] = {}
        self._warned: set[str] = set()

    def add(self, path: str, scheduler: Scheduler) -> None:
        with self._lock:
            self._schedulers[id(scheduler)] = scheduler
            self._paths[id(scheduler)] = path

    def describe(self) -> list[Metric]:
        return []  # dynamic: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        families = _families()
        with self._lock:  # one scrape at a time: the trackers are not shared between threads
            schedulers = [(self._paths[key], s) for key, s in list(self._schedulers.items())]
            for path, scheduler in schedulers:
                try:
                    self._collect_one(path, scheduler, families)
                except Exception as exc:  # never out of a scrape: the next one tries again
                    self._warn(path, f"cannot read the runs ({type(exc).__name__}: {exc})")
        yield from families.values()

    # -- one leading scheduler -------------------------------------------------------------------

    def _collect_one(self, path: str, scheduler: Scheduler, families: dict[str, Any]) -> None:
        generation = scheduler.leading_generation()
        client = scheduler.zk_client
        if generation is None or client is None:
            return
        view = _leader_view(scheduler, generation)
        if view is None:  # leading, the state not loaded yet: nothing to say this scrape
            return
        states, periods = view
        state = self._state.setdefault(path, _PathState())
        lead = (id(scheduler), generation)
        taking_over = state.lead != lead
        if taking_over:
            state.lead, state.trackers = lead, {}
        for name in list(state.series):  # entries gone from the schedule: their series too
            if name not in states:
                del state.series[name]
        for name in list(state.trackers):
            if name not in states:
                del state.trackers[name]
        base = layout.dedup_path(path)
        folders = {
            name: f"{base}/{layout.dedup_folder(name, entry.incarnation)}"
            for name, entry in states.items()
        }
        listings = {name: client.get_children_async(folder) for name, folder in folders.items()}
        running: dict[str, int] = {}
        reads: list[tuple[str, int, str]] = []
        for name, entry in states.items():
            tracker = state.trackers.get(name)
            if tracker is None or tracker.incarnation != entry.incarnation:
                tracker = state.trackers[name] = _Tracker(entry.incarnation, baseline=taking_over)
            series = state.series.setdefault(name, _Series())
            self._count_skips(tracker, series, entry.recent)
            try:
                children = listings[name].get()
            except NoNodeError:  # no worker recorded a run of this incarnation
                children = []
            except Exception as exc:  # NoAuthError, a lost connection: this entry, this scrape
                self._warn(path, f"cannot list the runs of entry {name!r} ({type(exc).__name__})")
                continue
            claims, markers = run_ordinals(children)
            newest = max(claims | markers, default=None)
            running[name] = 1 if newest is not None and newest in claims else 0
            tracker.seen &= markers
            new = sorted(markers - tracker.seen - claims)  # a claimed marker: a retry runs
            limit = self.baseline_reads if tracker.baseline else self.max_reads
            if len(new) > limit:
                if not tracker.baseline:
                    self._warn(path, f"entry {name!r}: {len(new) - limit} runs left uncounted")
                tracker.seen.update(new[:-limit])
                new = new[-limit:]
            reads += [(name, ordinal, folders[name]) for ordinal in new]
        paths = [f"{folder}/d{ordinal:020d}" for _name, ordinal, folder in reads]
        for (name, ordinal, _folder), result in zip(reads, read_nodes(client, paths), strict=True):
            tracker = state.trackers[name]
            self._count_marker(tracker, state.series[name], ordinal, result)
        for tracker in state.trackers.values():
            tracker.baseline = False
        self._export(path, state, running, periods, families)

    def _count_marker(self, tracker: _Tracker, series: _Series, ordinal: int, result: Any) -> None:
        try:
            data, stat = result.get()
        except (NoNodeError, NoAuthError):  # pruned meanwhile, or not ours to read
            tracker.seen.add(ordinal)
            return
        marker = layout.json_object(bytes(data or b""))
        state = marker.get("state")
        if state == _RETRYING:  # not final yet: read again next scrape
            return
        tracker.seen.add(ordinal)
        outcome = _FINAL.get(state) if isinstance(state, str) else None
        if outcome is None:  # unreadable: no outcome to tell
            return
        if not tracker.baseline:
            series.observe(outcome, number_or_none(marker.get("duration")))
        if outcome == "succeeded":
            series.succeeded_at(stat.mtime / 1000.0)

    @staticmethod
    def _count_skips(tracker: _Tracker, series: _Series, recent: tuple[Any, ...]) -> None:
        times = [
            record.due_at
            for record in map(leader_record, recent)
            if record is not None and record.ordinal is None and record.due_at is not None
        ]
        mark = -math.inf if tracker.baseline else series.skip_mark
        if not tracker.baseline:
            for _ in range(sum(when > mark for when in times)):
                series.observe(SKIPPED, None)
        series.skip_mark = max([mark, *times])

    @staticmethod
    def _export(
        path: str,
        state: _PathState,
        running: dict[str, int],
        periods: dict[str, float],
        families: dict[str, Any],
    ) -> None:
        for name, series in sorted(state.series.items()):
            labels = [path, name]
            for outcome, count in sorted(series.counts.items()):
                families["runs"].add_metric([*labels, outcome], count)
            if any(series.buckets):
                cumulative, total = [], 0
                for bound, count in zip((*DURATION_BUCKETS, math.inf), series.buckets, strict=True):
                    total += count
                    cumulative.append(("+Inf" if bound == math.inf else repr(bound), total))
                families["duration"].add_metric(labels, cumulative, series.duration_sum)
            if name in running:
                families["running"].add_metric(labels, running[name])
            if series.last_success is not None:
                families["success"].add_metric(labels, series.last_success)
        for name, seconds in sorted(periods.items()):
            families["period"].add_metric([path, name], seconds)

    def _warn(self, path: str, detail: str) -> None:
        key = f"{path}\x00{detail}"
        level = logging.DEBUG if key in self._warned else logging.WARNING
        if len(self._warned) < 1000:
            self._warned.add(key)
        logger.log(level, "beatleader: metrics of %s: %s", path, _one_line(detail))


def _one_line(text: str) -> str:
    """``text`` on one line, bounded (names from ZooKeeper may hold anything)."""
    text = text.encode("unicode_escape", "replace").decode("ascii")
    return text if len(text) <= 300 else text[:297] + "..."


def _families() -> dict[str, Any]:
    labels = ["path", "entry"]
    return {
        "runs": CounterMetricFamily(
            "beatleader_runs",
            "Finished runs counted by this leader, by outcome (succeeded, failed, skipped)",
            labels=[*labels, "outcome"],
        ),
        "duration": HistogramMetricFamily(
            "beatleader_run_duration_seconds",
            "Seconds the task body of each counted run took (the worker's clock)",
            labels=labels,
        ),
        "running": GaugeMetricFamily(
            "beatleader_entry_running",
            "1 while a worker holds the claim of the entry's newest run",
            labels=labels,
        ),
        "success": GaugeMetricFamily(
            "beatleader_last_success_timestamp_seconds",
            "Unix time (ZooKeeper's clock) the newest succeeded run seen finished",
            labels=labels,
        ),
        "period": GaugeMetricFamily(
            "beatleader_entry_period_seconds",
            "Seconds between two runs of an interval ('every') entry",
            labels=labels,
        ),
    }


def _leader_view(
    scheduler: Scheduler, generation: int
) -> tuple[dict[str, layout.EntryState], dict[str, float]] | None:
    """The leader's committed state per scheduled entry, and the interval entries' periods.

    Read from the scheduler's memory (its ``_stored`` states, loaded at takeover and adopted at
    each commit): None while the state of this leadership is not loaded yet.
    """
    if getattr(scheduler, "_loaded_generation", generation) != generation:
        return None
    stored = getattr(scheduler, "_stored", None)
    for _attempt in range(3):  # the beat thread may resize them meanwhile
        try:
            entries = list(scheduler.schedule.items())
            found = dict(stored or {})
            break
        except RuntimeError:
            continue
    else:
        return None
    states: dict[str, layout.EntryState] = {}
    periods: dict[str, float] = {}
    for name, entry in entries:
        state = getattr(found.get(name), "state", None)
        if isinstance(state, layout.EntryState):
            states[name] = state
        seconds = _period(getattr(entry, "schedule", None))
        done = getattr(scheduler, "entry_done", None)
        if seconds is not None and done is not None and done(name):
            seconds = None  # its policy ended it: no period, so never overdue
        if seconds is not None:
            periods[name] = seconds
    return states, periods


def _period(sched: Any) -> float | None:
    """Seconds of celery's plain interval schedule (not a subclass: it may decide otherwise)."""
    cls = type(sched)
    if cls.__name__ != "schedule" or cls.__module__ != "celery.schedules":
        return None
    try:
        seconds = float(sched.run_every.total_seconds())
    except Exception:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


_lock = threading.Lock()
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, RunCollector] = (
    weakref.WeakKeyDictionary()
)


def watch(scheduler: Scheduler, registry: CollectorRegistry | None = None) -> RunCollector:
    """Export ``scheduler``'s per-entry health into ``registry`` (default: the global one)."""
    registry = REGISTRY if registry is None else registry
    with _lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = _collectors[registry] = RunCollector()
            registry.register(collector)
    collector.add(scheduler.settings.path, scheduler)
    return collector
