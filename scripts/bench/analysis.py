"""From recorded samples to figures: pure functions, no process, no broker, no clock.

The samples are what the measurements read back: ``Send`` (one task message: its send time in
CLOCK_MONOTONIC ms, the sender's pid, its task id, its ``bench_late_ms``), ``Event`` (a signal
to the leader), ``LLEN celery`` samples and per-entry (sent, late) runs of the throughput phase.
What this module guarantees for them:

* failover latency: signal -> first send, by another instance, of a task id not sent before the
  signal; largest gap: the longest pause between consecutive sends from the last send before the
  signal to that first send (one interval, 1,000 ms, is a seamless handoff);
* steady lateness: ``bench_late_ms`` of the sends outside the failover windows (signal ->
  successor's first send), and the cross-check gap - interval between consecutive sends of one
  instance, both outside the windows; percentiles are nearest-rank;
* duplicates: sends less than half an interval after the previous send (any instance); repeated
  task ids counted apart;
* throughput: the least-squares slope of ``LLEN celery`` over time (sends/s), the endpoints'
  rate, the sum over entries of 1 / mean period, and the sends late by more than ``LATE_MS``;
  CPU per 1,000 sends: the beats' CPU seconds (utime + stime of ``/proc/<pid>/stat``, summed
  over every beat of the setup) over the window / the sends in it (``LLEN`` last - first) x 1,000.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scripts.bench.common import INTERVAL_MS, LATE_MS, LATE_MS_HEADER

#: (start, end) of a failover window in ms; end is ``math.inf`` when nobody took over.
Window = tuple[int, float]


@dataclass(frozen=True)
class Send:
    """One task message: when, by which process, with which task id, how late."""

    sent_ms: int
    pid: int
    task_id: str
    late_ms: float | None


@dataclass(frozen=True)
class Event:
    """A signal sent to the leader at ``at_ms``."""

    kind: str
    at_ms: int
    victim: int


def origin_pid(headers: Mapping[str, Any]) -> int:
    """The publisher's pid from celery's ``origin`` header (``gen<pid>@host``)."""
    return int(str(headers["origin"]).split("@", 1)[0].removeprefix("gen"))


def late_ms(headers: Mapping[str, Any]) -> float | None:
    """The ``bench_late_ms`` header, None when the message has none."""
    value = headers.get(LATE_MS_HEADER)
    return None if value is None else float(value)


# -- failover timelines ------------------------------------------------------------------------


@dataclass
class Failover:
    """What happened after one signal to the leader."""

    event: Event
    latency_ms: int | None
    max_gap_ms: int | None
    successor: int | None

    @property
    def window(self) -> Window:
        """Signal -> successor's first send (open-ended when nobody took over)."""
        end = math.inf if self.latency_ms is None else self.event.at_ms + self.latency_ms
        return self.event.at_ms, end


def failover(sends: Sequence[Send], event: Event) -> Failover:
    """Signal -> first new run sent by another instance, and the largest gap across the change.

    A new run is a task id not sent before the signal: the successor republishing the victim's
    last run (the outbox, same task id; counted under repeated task ids) is not the schedule
    going on, and the run after it, late by the failover, belongs to the failover window.
    """
    seen = {s.task_id for s in sends if s.sent_ms < event.at_ms}
    takeover = next(
        (
            s
            for s in sends
            if s.sent_ms >= event.at_ms and s.pid != event.victim and s.task_id not in seen
        ),
        None,
    )
    if takeover is None:
        return Failover(event, None, None, None)
    before = [s.sent_ms for s in sends if s.sent_ms < event.at_ms][-1:]
    across = before + [s.sent_ms for s in sends if event.at_ms <= s.sent_ms <= takeover.sent_ms]
    gaps = [b - a for a, b in itertools.pairwise(across)]
    return Failover(event, takeover.sent_ms - event.at_ms, max(gaps, default=None), takeover.pid)


def in_any(moment: int, windows: Sequence[Window]) -> bool:
    return any(start <= moment <= end for start, end in windows)


def due_lateness(sends: Sequence[Send], windows: Sequence[Window] = ()) -> list[float]:
    """``bench_late_ms`` of every send outside the failover windows."""
    return [s.late_ms for s in sends if s.late_ms is not None and not in_any(s.sent_ms, windows)]


def gap_lateness(sends: Sequence[Send], windows: Sequence[Window] = ()) -> list[float]:
    """gap - interval of consecutive sends by one instance, both outside the windows."""
    return [
        b.sent_ms - a.sent_ms - INTERVAL_MS
        for a, b in itertools.pairwise(sends)
        if a.pid == b.pid and not in_any(a.sent_ms, windows) and not in_any(b.sent_ms, windows)
    ]


def close_sends(sends: Sequence[Send]) -> int:
    """Sends less than half an interval after the previous send: duplicates."""
    return sum(b.sent_ms - a.sent_ms < INTERVAL_MS / 2 for a, b in itertools.pairwise(sends))


def repeated_ids(sends: Sequence[Send]) -> int:
    """Sends whose task id an earlier send already had."""
    return len(sends) - len({s.task_id for s in sends})


def senders(sends: Sequence[Send]) -> int:
    """How many instances sent."""
    return len({s.pid for s in sends})


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class TimelineResult:
    """One scheduler's failover timeline and what it shows."""

    label: str
    start_ms: int
    end_ms: int
    sends: list[Send]
    crash: Failover
    handoff: Failover
    lateness: list[float]
    gap_lateness: list[float]
    duplicates: int
    repeated_task_ids: int

    @property
    def seconds(self) -> float:
        return (self.end_ms - self.start_ms) / 1000


def analyse_timeline(
    label: str, span: tuple[int, int], sends: list[Send], events: Sequence[Event]
) -> TimelineResult:
    """The figures of a timeline: ``events`` are the SIGKILL, then the SIGTERM."""
    crash, handoff = (failover(sends, event) for event in events)
    windows = [crash.window, handoff.window]
    return TimelineResult(
        label,
        *span,
        sends,
        crash,
        handoff,
        due_lateness(sends, windows),
        gap_lateness(sends, windows),
        close_sends(sends),
        repeated_ids(sends),
    )


# -- PersistentScheduler -----------------------------------------------------------------------


@dataclass
class PersistentResult:
    """A single PersistentScheduler's steady lateness; N of them sending duplicates."""

    single_sends: list[Send]
    lateness: list[float]
    gap_lateness: list[float]
    group_sends: list[Send]
    group_seconds: float
    duplicates: int


def analyse_persistent(
    alone: list[Send], group: list[Send], group_seconds: float
) -> PersistentResult:
    """Lateness of the sends of one instance alone; duplicates among those of the group."""
    return PersistentResult(
        alone, due_lateness(alone), gap_lateness(alone), group, group_seconds, close_sends(group)
    )


# -- throughput --------------------------------------------------------------------------------


@dataclass
class ThroughputResult:
    """Sends/s of one setup with many entries due every second, on the Redis broker."""

    label: str
    instances: int
    entries: int
    window_s: float
    #: Least-squares slope of ``LLEN celery`` sampled every ``LLEN_EVERY`` s over the window.
    sends_per_s: float
    #: (last - first sample) / window: off by up to one burst of ``entries`` sends.
    endpoint_per_s: float
    #: Sum over entries of 1 / their mean period in the window (from the headers).
    sustained_per_s: float
    lateness: list[float] = field(repr=False)
    late: int
    llen_samples: list[tuple[int, int]] = field(repr=False)
    #: Messages queued between the first and the last ``LLEN`` sample.
    sends_in_window: int = 0
    #: CPU seconds (user + system) of every beat of the setup over the window; None: not read.
    cpu_s: float | None = None
    #: ``cpu_s`` per 1,000 ``sends_in_window``; None when not measured or no send.
    cpu_per_1000_sends: float | None = None


def throughput_result(
    label: str,
    count: int,
    entries: int,
    samples: list[tuple[int, int]],
    sends: Mapping[str, list[tuple[int, float]]],
    cpu_s: float | None = None,
) -> ThroughputResult:
    """The figures of ``(ms, LLEN)`` ``samples`` and of the entries' ``(sent_ms, late_ms)``
    runs; only the runs sent between the first and the last sample count. ``cpu_s``: the
    beats' CPU seconds over the same window (``cpu_delta``)."""
    (start, first), (end, last) = samples[0], samples[-1]
    seconds = (end - start) / 1000
    slope = statistics.linear_regression([t for t, _ in samples], [n for _, n in samples]).slope
    lateness = [late for runs in sends.values() for sent, late in runs if start <= sent <= end]
    return ThroughputResult(
        label,
        count,
        entries,
        seconds,
        slope * 1000,
        (last - first) / seconds,
        sustained_rate(sends, start, end),
        lateness,
        sum(v > LATE_MS for v in lateness),
        samples,
        last - first,
        cpu_s,
        cpu_per_1000(cpu_s, last - first),
    )


def stat_cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks) from the text of ``/proc/<pid>/stat``.

    The second field (the command name, in parentheses) may hold spaces and parentheses:
    the fields are counted from its last ``)``; utime and stime are fields 14 and 15.
    """
    after = stat[stat.rindex(")") + 2 :].split()
    # after[0] is field 3 (state): field n is after[n - 3].
    return int(after[14 - 3]) + int(after[15 - 3])


def cpu_delta(start: Mapping[int, int], end: Mapping[int, int], ticks_per_s: float) -> float:
    """CPU seconds between two readings ``pid -> ticks`` of the same processes, summed.

    A pid missing from either reading (it exited, its stat was unreadable) raises ValueError:
    a partial sum would understate the cost."""
    if set(start) != set(end):
        raise ValueError(f"CPU read for pids {sorted(start)} then {sorted(end)}")
    return sum(end[pid] - start[pid] for pid in start) / ticks_per_s


def cpu_per_1000(cpu_s: float | None, sends: int) -> float | None:
    """``cpu_s`` per 1,000 sends; None when not measured or no send."""
    if cpu_s is None or sends <= 0:
        return None
    return cpu_s / sends * 1000


def sustained_rate(sends: Mapping[str, list[tuple[int, float]]], start: int, end: int) -> float:
    """Sum over entries of 1 / (mean period between their sends in [start, end]), per second."""
    rate = 0.0
    for runs in sends.values():
        times = sorted(sent for sent, _ in runs if start <= sent <= end)
        if len(times) >= 2 and times[-1] > times[0]:
            rate += (len(times) - 1) / (times[-1] - times[0]) * 1000
    return rate


# -- the worker guard ----------------------------------------------------------------------------


@dataclass
class GuardResult:
    """One worker draining ``runs`` pre-published runs: unguarded, guarded, or guarded at a ref.

    ``history_size`` is None for the unguarded worker (and for a ref whose guard keeps none);
    ``zk_requests`` is the server's ``zk_packets_received`` delta from just before the worker
    started to its last execution (None unguarded: nothing of it talks to ZooKeeper).
    """

    label: str
    guarded: bool
    history_size: int | None
    runs: int
    executions: int
    repeated_ids: int
    seconds: float
    per_s: float | None
    zk_requests: int | None
    #: executions/s of each round, in the order they ran (one entry for a single round).
    round_rates: list[float | None] = field(default_factory=list)

    @property
    def requests_per_run(self) -> float | None:
        if self.zk_requests is None or self.executions <= 0:
            return None
        return self.zk_requests / self.executions


def execution_rate(timestamps: Sequence[float]) -> tuple[float, float | None]:
    """(seconds from the first to the last execution, executions/s over them).

    ``n`` executions span ``n - 1`` intervals: the rate is ``(n - 1) / span``; None for fewer
    than two executions or a zero span.
    """
    if len(timestamps) < 2:
        return 0.0, None
    span = max(timestamps) - min(timestamps)
    return span, ((len(timestamps) - 1) / span if span > 0 else None)


def guard_result(
    label: str,
    guarded: bool,
    history_size: int | None,
    runs: int,
    executions: Sequence[tuple[float, str]],
    packets: tuple[int, int] | None,
) -> GuardResult:
    """``executions``: (timestamp s, task id) each; ``packets``: ``zk_packets_received`` before
    the worker started and after its last execution (None: not counted)."""
    stamps = [ts for ts, _ in executions]
    seconds, per_s = execution_rate(stamps)
    ids = [task_id for _, task_id in executions]
    return GuardResult(
        label=label,
        guarded=guarded,
        history_size=history_size,
        runs=runs,
        executions=len(executions),
        repeated_ids=len(ids) - len(set(ids)),
        seconds=seconds,
        per_s=per_s,
        zk_requests=None if packets is None else packets[1] - packets[0],
        round_rates=[per_s],
    )


def combine_rounds(rounds: Sequence[GuardResult]) -> GuardResult:
    """The rounds of one variant as one result: runs, executions, seconds and requests summed;
    executions/s is the median of the rounds' own rates (each from its first execution to its
    last): a round slowed down as a whole by the machine (a two-core VM) does not move it."""
    first = rounds[0]
    seconds = sum(r.seconds for r in rounds)
    rates = [rate for r in rounds for rate in r.round_rates if rate is not None]
    requests = [r.zk_requests for r in rounds]
    return GuardResult(
        label=first.label,
        guarded=first.guarded,
        history_size=first.history_size,
        runs=sum(r.runs for r in rounds),
        executions=sum(r.executions for r in rounds),
        repeated_ids=sum(r.repeated_ids for r in rounds),
        seconds=seconds,
        per_s=statistics.median(rates) if rates else None,
        zk_requests=None if None in requests else sum(r or 0 for r in requests),
        round_rates=[rate for r in rounds for rate in r.round_rates],
    )


def throughput_ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``; None when either is missing or not positive."""
    if numerator is None or denominator is None or numerator <= 0 or denominator <= 0:
        return None
    return numerator / denominator
