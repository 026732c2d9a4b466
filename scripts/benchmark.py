#!/usr/bin/env python3
"""Benchmark beatleader against celery-redbeat and celery's PersistentScheduler, all in one run.

Run it from the repository root: ``python3 -m scripts.benchmark [--help]``.

Every figure printed is measured in this run, on this machine, against a ZooKeeper and a Redis
the script starts itself in a temporary directory, with real ``celery beat`` processes running
``scripts/bench_app.py`` (``tests.app`` plus measuring hooks); nothing is hard-coded. Phases,
one after the other:

1. **Timeline, beatleader xN** (``--instances`` 3, ``--seconds`` 180: about 170 steady sends,
   so that the lateness p99 is not simply the worst of a few dozen): one entry due every 1 s on
   kombu's filesystem broker. The clock starts after the first sends; at 1/3 of the run the
   leader gets SIGKILL, at 2/3 the new leader gets SIGTERM. The leader is the sender of the
   latest message; each signal goes ``--signal-phase`` seconds after one of its sends, so every
   scheduler is hit at the same point of its 1 s cycle.
2. **Timeline, redbeat xN**: the same with ``redbeat.RedBeatScheduler`` (Redis lock with
   ``redbeat_lock_timeout`` = beatleader's session timeout). ``beat_max_loop_interval`` is 1 s
   for every scheduler.
3. **PersistentScheduler**: one instance alone for ``--baseline-seconds`` (steady lateness),
   then N-1 more join on the same schedule and the duplicates are counted for
   ``--dup-seconds``. It has no failover to measure.
5. **Runtime entries** (``scripts/bench_runtime.py``; ``--only-runtime`` runs it alone): a
   leader takes over ``--runtime-definitions`` (10,000) definitions, new and with run state; the
   takeover time, the reads it sent, and the reads, requests and time of one update, one
   addition and one removal of a definition.
4. **Throughput** (for each count in ``--entries``, default 1,000 and 4,000: that many entries,
   each due every 1 s, Redis broker, no worker):
   beatleader xN vs one PersistentScheduler. After the first full round and ``--warmup``
   seconds, ``LLEN celery`` is sampled every 0.1 s for ``--throughput-seconds``; sends/s is its
   least-squares slope (the two endpoints alone are off by up to one burst of all entries).

What is measured. Send times are CLOCK_MONOTONIC ms at publication (the filesystem transport's
message file name; on Redis the ``bench_sent_ms`` header); the sender is celery's ``origin``
header ``gen<pid>@host``.

* failover latency: signal -> first send by another instance. Largest gap: the longest pause
  between consecutive sends from the last send before the signal to that first send of the
  successor (1,000 ms, one interval, is a seamless handoff).
* lateness against the due time: celery's interval schedule makes a run due at the entry's
  ``last_run_at`` + interval. ``bench_app`` records that due time inside the beat process when
  ``is_due()`` answers "due" and stamps the message at publication with ``now - due`` (the
  ``bench_late_ms`` header), so it includes everything between the due time and the publication
  (the loop's wake-up, beatleader's ZooKeeper commit, the broker write). Cross-check without any
  hook: gap between consecutive sends - interval (``last_run_at`` is stamped at the previous
  send). Steady state: sends outside the failover windows (signal -> successor's first send);
  gaps only between two sends of the same instance. Percentiles are nearest-rank.
* duplicates: sends less than half an interval after the entry's previous send (any instance);
  beatleader's deterministic task ids are also checked for repeats.
* throughput late > 1 s: sends in the window whose ``bench_late_ms`` exceeds 1,000 ms.

The machine may be shared and the numbers noisy: the load average is printed at start and end.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis

from beatleader.testing.localproc import LoggedProcess

try:
    from scripts.bench_runtime import RuntimeResult, run_runtime, runtime_ratios, runtime_rows
    from tests.harness import (
        FilesystemBroker,
        RedisServer,
        SentMessage,
        ZooKeeperServer,
        wait_for,
    )
except ModuleNotFoundError as exc:  # run as a file from elsewhere: no sys.path tricks here
    raise SystemExit(
        f"scripts/benchmark.py: {exc}; from the repository root: python3 -m scripts.benchmark"
    ) from None

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = REPO_ROOT / "scripts"

BEATLEADER = "beatleader.Scheduler"
REDBEAT = "redbeat.RedBeatScheduler"
PERSISTENT = "celery.beat:PersistentScheduler"
ENTRY = "tick"
INTERVAL_S = 1.0
INTERVAL_MS = int(INTERVAL_S * 1000)
MAX_LOOP_INTERVAL = "1"
QUEUE = "celery"
SENT_MS_HEADER = "bench_sent_ms"  # bench_app.SENT_MS_HEADER
LATE_MS_HEADER = "bench_late_ms"  # bench_app.LATE_MS_HEADER
STARTUP_TIMEOUT = 90.0
#: The first throughput round may take this long per entry (celery's PersistentScheduler
#: compares every entry with its copy on every tick: quadratic in the entry count).
FIRST_ROUND_S_PER_ENTRY = 0.06
LATE_MS = 1000
STARTED = time.monotonic()

Window = tuple[int, float]
Row = tuple[str, str, str, str]


def now_ms() -> int:
    """CLOCK_MONOTONIC in ms: the clock of every send time measured here."""
    return int(time.monotonic() * 1000)


def progress(message: str) -> None:
    """A progress line on stderr (the results go to stdout)."""
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def sleep_until(deadline_ms: float) -> None:
    time.sleep(max(0.0, (deadline_ms - now_ms()) / 1000))


# -- processes ---------------------------------------------------------------------------------


class Beat(LoggedProcess):
    """One ``celery -A bench_app beat -S <scheduler>`` subprocess logging to a file."""

    def __init__(
        self, name: str, workdir: Path, env: Mapping[str, str], scheduler: str, loglevel: str
    ) -> None:
        args = [
            *(sys.executable, "-m", "celery", "-A", "bench_app", "beat", "-S", scheduler),
            f"--loglevel={loglevel}",
            *("--schedule", str(workdir / f"{name}.db")),
        ]
        super().__init__(args, workdir / f"{name}.log", cwd=REPO_ROOT, env=env, name=name)


class Fleet:
    """Every beat the benchmark starts, so that all of them are killed whatever happens."""

    def __init__(self, workdir: Path, base_env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.base_env = dict(base_env)
        self.beats: list[Beat] = []

    def start(
        self, label: str, count: int, scheduler: str, env: Mapping[str, str], loglevel: str = "INFO"
    ) -> list[Beat]:
        names = [f"{label}-{len(self.beats) + i + 1}" for i in range(count)]
        merged = {**self.base_env, **env}
        started = [Beat(name, self.workdir, merged, scheduler, loglevel) for name in names]
        self.beats.extend(started)
        return started

    def by_pid(self, pid: int) -> Beat:
        return next(beat for beat in self.beats if beat.pid == pid)

    def close(self) -> None:
        for beat in self.beats:
            beat.kill()
            beat.wait_exit()


def stop_all(beats: Sequence[Beat]) -> None:
    for beat in beats:
        beat.stop()


# -- sends -------------------------------------------------------------------------------------


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
    value = headers.get(LATE_MS_HEADER)
    return None if value is None else float(value)


def to_send(message: SentMessage) -> Send:
    headers = message.headers
    return Send(message.sent_ms, origin_pid(headers), message.task_id, late_ms(headers))


def read_sends(broker: FilesystemBroker, after_ms: float = 0) -> list[Send]:
    """The sends of ``ENTRY`` at or after ``after_ms``, oldest first."""
    return [to_send(m) for m in broker.for_entry(ENTRY) if m.sent_ms >= after_ms]


def wait_for_sends(
    broker: FilesystemBroker, count: int, after_ms: float = 0, interval: float = 0.1
) -> list[Send]:
    """Wait until ``count`` sends happened at or after ``after_ms``; return them."""

    def enough() -> list[Send]:
        sends = read_sends(broker, after_ms)
        return sends if len(sends) >= count else []

    found: list[Send] = wait_for(
        enough, STARTUP_TIMEOUT, interval=interval, message=f"{count} sends of {ENTRY!r}"
    )
    return found


# -- analysis ----------------------------------------------------------------------------------


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
    return len(sends) - len({s.task_id for s in sends})


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


# -- phases ------------------------------------------------------------------------------------


@dataclass
class Context:
    """What every phase needs: settings, the fleet of beats, the Redis URL, a work folder."""

    args: argparse.Namespace
    workdir: Path
    fleet: Fleet
    redis_url: str
    zk: ZooKeeperServer

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def broker(self, label: str) -> tuple[FilesystemBroker, dict[str, str]]:
        """A fresh filesystem broker folder and the env that points beats at it."""
        folder = self.workdir / f"{label}-broker"
        folder.mkdir()
        schedule = json.dumps({ENTRY: {"every": INTERVAL_S}})
        return FilesystemBroker(folder), {"TEST_BROKER_DIR": str(folder), "TEST_SCHEDULE": schedule}


def signal_leader(ctx: Context, broker: FilesystemBroker, kind: str, not_before: int) -> Event:
    """``kind`` (SIGKILL/SIGTERM) to the sender of the first send at or after ``not_before``,
    ``--signal-phase`` seconds after that send."""
    send = wait_for_sends(broker, 1, not_before, interval=0.05)[0]
    leader = ctx.fleet.by_pid(send.pid)
    sleep_until(send.sent_ms + ctx.args.signal_phase * 1000)
    at = now_ms()
    leader.send_signal(getattr(signal, kind))
    progress(f"  {kind} -> {leader.name} (pid {leader.pid}), {at - send.sent_ms} ms after its send")
    return Event(kind, at, leader.pid)


def run_timeline(ctx: Context, label: str, scheduler: str) -> TimelineResult:
    """Steady, SIGKILL the leader, steady, SIGTERM the leader, steady."""
    seconds, count = ctx.args.seconds, ctx.args.instances
    progress(f"{label} x{count}: {seconds:g} s timeline (SIGKILL at 1/3, SIGTERM at 2/3)")
    ctx.redis().flushall()
    broker, env = ctx.broker(label)
    beats = ctx.fleet.start(label, count, scheduler, {**env, "BEATLEADER_PATH": f"/bench/{label}"})
    start = wait_for_sends(broker, 2)[-1].sent_ms
    events = [
        signal_leader(ctx, broker, kind, start + int(fraction * seconds * 1000))
        for fraction, kind in ((1 / 3, "SIGKILL"), (2 / 3, "SIGTERM"))
    ]
    end = start + int(seconds * 1000)
    sleep_until(end)
    stop_all(beats)
    sends = [s for s in read_sends(broker, start) if s.sent_ms <= end]
    result = analyse_timeline(label, (start, end), sends, events)
    progress(f"  steady lateness p50/p99 {quantiles(result.lateness)}")
    return result


@dataclass
class PersistentResult:
    """A single PersistentScheduler's steady lateness; N of them sending duplicates."""

    single_sends: list[Send]
    lateness: list[float]
    gap_lateness: list[float]
    group_sends: list[Send]
    group_seconds: float
    duplicates: int


def run_persistent(ctx: Context) -> PersistentResult:
    """One PersistentScheduler alone, then N of them at once on the same schedule."""
    count, alone_s, group_s = ctx.args.instances, ctx.args.baseline_seconds, ctx.args.dup_seconds
    progress(f"PersistentScheduler x1 for {alone_s:g} s, then x{count} for {group_s:g} s")
    broker, env = ctx.broker("persistent")
    beats = ctx.fleet.start("persistent", 1, PERSISTENT, env)
    start = wait_for_sends(broker, 2)[-1].sent_ms
    sleep_until(start + alone_s * 1000)
    alone = read_sends(broker, start)
    beats += ctx.fleet.start("persistent", count - 1, PERSISTENT, env)
    group_start = wait_all_sending(beats, broker, alone[-1].sent_ms + 1)
    sleep_until(group_start + group_s * 1000)
    group_end = now_ms()
    stop_all(beats)
    group = [s for s in read_sends(broker, group_start) if s.sent_ms <= group_end]
    seconds = (group_end - group_start) / 1000
    return PersistentResult(
        alone, due_lateness(alone), gap_lateness(alone), group, seconds, close_sends(group)
    )


def wait_all_sending(beats: Sequence[Beat], broker: FilesystemBroker, after_ms: int) -> int:
    """Wait until every one of ``beats`` has sent after ``after_ms``; return now."""
    pids = {beat.pid for beat in beats}
    wait_for(
        lambda: pids <= {s.pid for s in read_sends(broker, after_ms)},
        STARTUP_TIMEOUT,
        interval=0.1,
        message="every PersistentScheduler sending",
    )
    return now_ms()


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


LLEN_EVERY = 0.1


def run_throughput(
    ctx: Context, label: str, scheduler: str, count: int, entries: int
) -> ThroughputResult:
    """``entries`` entries due every second on the Redis broker; count what gets queued."""
    window = ctx.args.throughput_seconds
    progress(f"throughput {label} x{count}: {entries} entries, warm-up, {window:g} s window")
    client = ctx.redis()
    client.flushall()
    schedule = json.dumps({f"e{i:05d}": {"every": INTERVAL_S} for i in range(entries)})
    env = {"TEST_SCHEDULE": schedule, "BEATLEADER_PATH": f"/bench/throughput-{label}-{entries}"}
    name = f"throughput-{label}-{entries}"
    beats = ctx.fleet.start(name, count, scheduler, env, loglevel="WARNING")
    wait_for(
        lambda: client.llen(QUEUE) >= entries,
        max(STARTUP_TIMEOUT, entries * FIRST_ROUND_S_PER_ENTRY),
        interval=0.1,
        message=f"a first round of {entries} sends",
    )
    time.sleep(ctx.args.warmup)
    samples = sample_llen(client, window)
    stop_all(beats)
    sends = queued_sends(client)
    client.flushall()
    result = throughput_result(label, count, entries, samples, sends)
    progress(f"  {result.sends_per_s:,.0f} sends/s, lateness p50/p99 {quantiles(result.lateness)}")
    return result


def sample_llen(client: redis.Redis, seconds: float) -> list[tuple[int, int]]:
    """(now_ms, LLEN celery) every ``LLEN_EVERY`` seconds for ``seconds``."""
    end = now_ms() + seconds * 1000
    samples: list[tuple[int, int]] = []
    while not samples or samples[-1][0] < end:
        samples.append((now_ms(), int(client.llen(QUEUE))))
        time.sleep(LLEN_EVERY)
    return samples


def throughput_result(
    label: str,
    count: int,
    entries: int,
    samples: list[tuple[int, int]],
    sends: Mapping[str, list[tuple[int, float]]],
) -> ThroughputResult:
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
    )


def sustained_rate(sends: Mapping[str, list[tuple[int, float]]], start: int, end: int) -> float:
    """Sum over entries of 1 / (mean period between their sends in [start, end]), per second."""
    rate = 0.0
    for runs in sends.values():
        times = sorted(sent for sent, _ in runs if start <= sent <= end)
        if len(times) >= 2 and times[-1] > times[0]:
            rate += (len(times) - 1) / (times[-1] - times[0]) * 1000
    return rate


def queued_sends(client: redis.Redis) -> dict[str, list[tuple[int, float]]]:
    """Entry name -> (``bench_sent_ms``, ``bench_late_ms``) of its messages in the queue."""
    sends: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for raw in client.lrange(QUEUE, 0, -1):
        headers = json.loads(raw)["headers"]
        late = late_ms(headers)
        if late is not None:
            name = ast.literal_eval(headers["argsrepr"])[0]
            sends[name].append((int(headers[SENT_MS_HEADER]), late))
    return sends


# -- report ------------------------------------------------------------------------------------


@dataclass
class Results:
    """Everything measured; the report and ``--json`` are made from this."""

    beatleader: TimelineResult
    redbeat: TimelineResult | None
    persistent: PersistentResult
    throughput: list[ThroughputResult]
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]
    runtime: RuntimeResult | None = None


def ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.1f} ms" if abs(value) < 100 else f"{value:,.0f} ms"


def ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None or numerator <= 0 or denominator <= 0:
        return "n/a (a value is missing or <= 0)"
    return f"{numerator / denominator:.2f}"


def quantiles(values: Sequence[float]) -> str:
    return f"{ms(percentile(values, 50))} / {ms(percentile(values, 99))} (n={len(values)})"


def senders(sends: Sequence[Send]) -> int:
    return len({s.pid for s in sends})


def timeline_rows(res: Results) -> list[Row]:
    """Failover, lateness and duplicate rows of the table."""
    p = res.persistent
    dups = f"{p.duplicates} dups in {p.group_seconds:.0f} s"
    group = f"x{senders(p.group_sends)} sends duplicates: {dups}"

    def row(metric: str, pick: Callable[[TimelineResult], str], baseline: str) -> Row:
        redbeat = "skipped" if res.redbeat is None else pick(res.redbeat)
        return metric, pick(res.beatleader), redbeat, baseline

    return [
        row(
            "crash: SIGKILL leader -> next send",
            lambda r: ms(r.crash.latency_ms),
            f"n/a (single instance; {group})",
        ),
        row("  largest gap across the crash", lambda r: ms(r.crash.max_gap_ms), "n/a"),
        row("graceful: SIGTERM leader -> next send", lambda r: ms(r.handoff.latency_ms), "n/a"),
        row("  largest gap across the handoff", lambda r: ms(r.handoff.max_gap_ms), "n/a"),
        row(
            "steady lateness vs due time p50 / p99",
            lambda r: quantiles(r.lateness),
            quantiles(p.lateness) + " x1",
        ),
        row(
            "  cross-check: gap - 1 s p50 / p99",
            lambda r: quantiles(r.gap_lateness),
            quantiles(p.gap_lateness) + " x1",
        ),
        row(
            "duplicate sends",
            lambda r: f"{r.duplicates} in {r.seconds:.0f} s",
            f"{dups} x{senders(p.group_sends)}",
        ),
    ]


def throughput_rows(results: Sequence[ThroughputResult]) -> list[Row]:
    rows: list[Row] = []
    for entries in sorted({r.entries for r in results}):
        by = {r.label: r for r in results if r.entries == entries}
        rows += throughput_rows_of(by.get("beatleader"), by.get("persistent"))
    return rows


def throughput_rows_of(bl: ThroughputResult | None, ps: ThroughputResult | None) -> list[Row]:
    if bl is None or ps is None:
        return []
    return [
        (
            f"throughput, {bl.entries} entries every 1 s",
            f"{bl.sends_per_s:,.0f} sends/s",
            "not measured",
            f"{ps.sends_per_s:,.0f} sends/s x1",
        ),
        (
            "  sends late by > 1 s (in window)",
            f"{bl.late} of {len(bl.lateness)}",
            "not measured",
            f"{ps.late} of {len(ps.lateness)}",
        ),
        (
            "  lateness vs due time p50 / p99",
            quantiles(bl.lateness),
            "not measured",
            quantiles(ps.lateness),
        ),
    ]


def print_table(rows: Sequence[Row], header: Row) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def ratio_pairs(res: Results) -> list[tuple[str, str, float | None, float | None]]:
    """(metric, baseline name, beatleader value, baseline value)."""
    bl, rb, ps = res.beatleader, res.redbeat, res.persistent
    pairs: list[tuple[str, str, float | None, float | None]] = []
    if rb is not None:
        pairs += [
            ("crash failover latency", "redbeat", bl.crash.latency_ms, rb.crash.latency_ms),
            ("crash largest gap", "redbeat", bl.crash.max_gap_ms, rb.crash.max_gap_ms),
            ("graceful handoff latency", "redbeat", bl.handoff.latency_ms, rb.handoff.latency_ms),
            ("graceful largest gap", "redbeat", bl.handoff.max_gap_ms, rb.handoff.max_gap_ms),
        ]
    for q in (50, 99):
        mine = percentile(bl.lateness, q)
        pairs.append((f"lateness p{q}", "PersistentScheduler", mine, percentile(ps.lateness, q)))
        if rb is not None:
            pairs.append((f"lateness p{q}", "redbeat", mine, percentile(rb.lateness, q)))
    for entries in sorted({r.entries for r in res.throughput}):
        by = {r.label: r for r in res.throughput if r.entries == entries}
        if "beatleader" in by and "persistent" in by:
            tp = (by["beatleader"].sends_per_s, by["persistent"].sends_per_s)
            pairs.append((f"throughput {entries:,}", "PersistentScheduler", *tp))
    return pairs


def ratio_lines(res: Results) -> list[str]:
    return [
        f"{metric:<25} beatleader / {baseline:<19} = {ratio(mine, theirs)}"
        for metric, baseline, mine, theirs in ratio_pairs(res)
    ]


def detail_lines(res: Results) -> list[str]:
    lines = []
    for r in (res.beatleader, res.redbeat):
        if r is not None:
            lines.append(
                f"{r.label}: {len(r.sends)} sends in {r.seconds:.1f} s by "
                f"{senders(r.sends)} instances; SIGKILL pid {r.crash.event.victim} -> pid "
                f"{r.crash.successor}; SIGTERM pid {r.handoff.event.victim} -> pid "
                f"{r.handoff.successor}; repeated task ids: {r.repeated_task_ids}"
            )
    p = res.persistent
    lines.append(
        f"PersistentScheduler: x1 {len(p.single_sends)} sends; x{senders(p.group_sends)} "
        f"{len(p.group_sends)} sends in {p.group_seconds:.1f} s"
    )
    for t in res.throughput:
        lines.append(
            f"throughput {t.label} x{t.instances}: LLEN slope {t.sends_per_s:,.0f} sends/s, "
            f"endpoints {t.endpoint_per_s:,.0f}/s, per-entry periods {t.sustained_per_s:,.0f}/s "
            f"over {t.window_s:.1f} s (ideal {t.entries / INTERVAL_S:,.0f}/s)"
        )
    return lines


def legend(args: argparse.Namespace) -> list[str]:
    lines = [
        f"one entry every {INTERVAL_S:g} s; beat_max_loop_interval {MAX_LOOP_INTERVAL} s for "
        f"every scheduler; beatleader session timeout {args.session_timeout:g} s; "
        f"redbeat_lock_timeout {args.session_timeout:g} s; each signal "
        f"{args.signal_phase * 1000:,.0f} ms after one of the leader's sends",
        "next send: from the signal to the first send by another instance; largest gap: longest "
        "pause between consecutive sends from the last send before the signal to that send "
        f"({INTERVAL_MS:,} ms = seamless)",
        "lateness vs due time: publication - (last_run_at + interval), measured inside each beat "
        "(scripts/bench_app.py); cross-check: gap between consecutive sends of one instance - "
        "interval; steady state only (outside signal -> takeover windows); nearest-rank",
        "duplicates: sends < 0.5 interval after the entry's previous send (any instance)",
        "throughput: least-squares slope of LLEN celery (Redis broker, no worker) sampled every "
        f"{LLEN_EVERY:g} s over the window (the two endpoints alone are off by up to one burst "
        "of all entries); per-entry periods: sum of 1 / mean period between an entry's sends",
    ]
    if not args.skip_runtime:
        lines.append(
            "runtime entries: a leader in the benchmark's process takes over "
            f"{args.runtime_definitions:,} definitions (new; then with a run state each); reads "
            "counted on its client, requests by the server (cons lcxid); applied: from the write "
            "to the change in the schedule, ticking every 5 ms (scripts/bench_runtime.py)"
        )
    timeout = args.session_timeout
    if timeout != int(timeout):
        lines.append(f"redbeat re-extends its lock to int(timeout) = {int(timeout)} s each tick")
    return lines


def print_report(args: argparse.Namespace, res: Results) -> None:
    print(f"\n== beatleader benchmark: {args.instances} instances, {args.seconds:g} s timeline ==")
    print("settings:", settings_line(args))
    print("machine: ", machine_line(res))
    print()
    header = (
        "metric",
        f"beatleader x{args.instances}",
        f"redbeat x{args.instances}",
        "PersistentScheduler",
    )
    runtime = runtime_rows(res.runtime) if res.runtime is not None else []
    print_table(timeline_rows(res) + throughput_rows(res.throughput) + runtime, header)
    sections = [
        (
            "ratios beatleader / baseline (times: < 1 is better for beatleader; throughput: > 1)",
            ratio_lines(res) + (runtime_ratios(res.runtime) if res.runtime is not None else []),
        ),
        ("details", detail_lines(res)),
        ("what is measured", ["- " + line for line in legend(args)]),
    ]
    for title, lines in sections:
        print(f"\n{title}:")
        for line in lines:
            print("  " + line)


def settings_line(args: argparse.Namespace) -> str:
    return (
        f"--seconds {args.seconds:g} --session-timeout {args.session_timeout:g} "
        f"--instances {args.instances} --signal-phase {args.signal_phase:g} "
        f"--baseline-seconds {args.baseline_seconds:g} --dup-seconds {args.dup_seconds:g} "
        f"--entries {' '.join(map(str, args.entries))} --warmup {args.warmup:g} "
        f"--throughput-seconds {args.throughput_seconds:g}"
        + (" --skip-redbeat" if args.skip_redbeat else "")
        + (" --skip-throughput" if args.skip_throughput else "")
        + (" --skip-runtime" if args.skip_runtime else "")
        + f" --runtime-definitions {args.runtime_definitions}"
    )


def machine_line(res: Results) -> str:
    start = "/".join(f"{v:.2f}" for v in res.load_start)
    end = "/".join(f"{v:.2f}" for v in res.load_end)
    return (
        f"nproc {os.cpu_count()}, {platform.system()} {platform.machine()}, Python "
        f"{platform.python_version()}, celery {version('celery')}, celery-redbeat "
        f"{version('celery-redbeat')}, kazoo {version('kazoo')}, redis-py {version('redis')}; "
        f"load average {start} at start, {end} at end"
    )


def dump_json(path: str, args: argparse.Namespace, res: Results | RuntimeResult) -> None:
    data = {"settings": vars(args), "nproc": os.cpu_count(), **asdict(res)}
    text = json.dumps(data, indent=1, default=str)
    if path == "-":
        print(text)
    else:
        Path(path).write_text(text + "\n")
        progress(f"raw results written to {path}")


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Failover, lateness and throughput of beatleader vs celery-redbeat vs "
        "celery's PersistentScheduler, measured now on this machine (see the module docstring). "
        "Default total runtime: about 10 minutes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--seconds", type=float, default=180, help="length of each failover timeline")
    add(
        "--session-timeout",
        type=float,
        default=2,
        help="beatleader session timeout, also used as redbeat_lock_timeout (seconds)",
    )
    add("--instances", type=int, default=3, help="beat instances per cluster")
    add(
        "--signal-phase",
        type=float,
        default=0.5,
        help="seconds after one of the leader's sends at which it gets SIGKILL/SIGTERM",
    )
    add(
        "--baseline-seconds",
        type=float,
        default=30,
        help="steady run of a single PersistentScheduler",
    )
    add(
        "--dup-seconds",
        type=float,
        default=10,
        help="how long N PersistentSchedulers run together to count duplicates",
    )
    add(
        "--entries",
        type=int,
        nargs="+",
        default=[1000, 4000],
        help="entry counts (each entry every 1 s) of the throughput phases",
    )
    add("--warmup", type=float, default=5, help="throughput warm-up after the first round")
    add("--throughput-seconds", type=float, default=15, help="throughput measuring window")
    add("--skip-redbeat", action="store_true", help="do not run the redbeat timeline")
    add("--skip-throughput", action="store_true", help="do not run the throughput phase")
    add("--skip-runtime", action="store_true", help="do not run the runtime entries part")
    add(
        "--only-runtime",
        action="store_true",
        help="run only the runtime entries part (about 30 s) and print its figures",
    )
    add(
        "--runtime-definitions",
        type=int,
        default=10_000,
        help="runtime definitions a leader takes over in the runtime entries part",
    )
    add("--json", metavar="PATH", help="also dump raw results as JSON to PATH ('-': stdout)")
    add("--keep", action="store_true", help="keep the work directory (beat logs) afterwards")
    args = parser.parse_args(argv)
    if args.instances < 2:
        parser.error("--instances must be at least 2 (a failover needs a successor)")
    if args.seconds < 9:
        parser.error("--seconds must be at least 9")
    if not 0 <= args.signal_phase < INTERVAL_S:
        parser.error(f"--signal-phase must be in [0, {INTERVAL_S:g})")
    return args


def base_env(zk_hosts: str, redis_url: str, args: argparse.Namespace) -> dict[str, str]:
    """The environment of every beat: servers, timeouts, bench_app on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "BEATLEADER_"))}
    python_path = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
    return {
        **env,
        "PYTHONPATH": os.pathsep.join([str(SCRIPTS_DIR), str(REPO_ROOT), *python_path]),
        "BEATLEADER_ZK_HOSTS": zk_hosts,
        "BEATLEADER_SESSION_TIMEOUT": f"{args.session_timeout:g}",
        "BENCH_REDBEAT_LOCK_TIMEOUT": f"{args.session_timeout:g}",
        "TEST_REDIS_URL": redis_url,
        "TEST_MAX_INTERVAL": MAX_LOOP_INTERVAL,
    }


@contextmanager
def servers(workdir: Path) -> Iterator[tuple[ZooKeeperServer, RedisServer]]:
    """A ZooKeeper and a Redis of the benchmark's own, stopped on the way out."""
    zk = ZooKeeperServer(workdir / "zookeeper")
    rd = RedisServer(workdir / "redis")
    try:
        progress("starting ZooKeeper and Redis")
        zk.start(timeout=60)
        rd.start()
        yield zk, rd
    finally:
        rd.stop()
        zk.stop()


def run_all(ctx: Context, load_start: tuple[float, float, float]) -> Results:
    args = ctx.args
    beatleader = run_timeline(ctx, "beatleader", BEATLEADER)
    redbeat = None if args.skip_redbeat else run_timeline(ctx, "redbeat", REDBEAT)
    persistent = run_persistent(ctx)
    throughput: list[ThroughputResult] = []
    if not args.skip_throughput:
        for entries in args.entries:
            throughput += [
                run_throughput(ctx, "beatleader", BEATLEADER, args.instances, entries),
                run_throughput(ctx, "persistent", PERSISTENT, 1, entries),
            ]
    runtime = None if args.skip_runtime else run_runtime(ctx.zk, args.runtime_definitions, progress)
    return Results(
        beatleader, redbeat, persistent, throughput, load_start, os.getloadavg(), runtime
    )


def measure(args: argparse.Namespace, workdir: Path) -> Results:
    """Start the servers and run every phase; every process is gone when this returns."""
    load_start = os.getloadavg()
    with servers(workdir) as (zk, rd):
        fleet = Fleet(workdir, base_env(zk.hosts, rd.url, args))
        try:
            return run_all(Context(args, workdir, fleet, rd.url, zk), load_start)
        finally:
            fleet.close()


def measure_runtime_only(args: argparse.Namespace, workdir: Path) -> RuntimeResult:
    """The runtime entries part alone, on a ZooKeeper of its own (no Redis, no beat process)."""
    zk = ZooKeeperServer(workdir / "zookeeper")
    try:
        progress("starting ZooKeeper")
        zk.start(timeout=60)
        return run_runtime(zk, args.runtime_definitions, progress)
    finally:
        zk.stop()


def print_runtime_report(result: RuntimeResult, load: tuple[float, float, float]) -> None:
    load_now = "/".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\n== beatleader benchmark: runtime entries ({result.definitions:,} definitions) ==")
    print(
        f"machine: nproc {os.cpu_count()}, Python {platform.python_version()}, kazoo "
        f"{version('kazoo')}; load average {'/'.join(f'{v:.2f}' for v in load)} at start, "
        f"{load_now} at end\n"
    )
    print_table(runtime_rows(result), ("metric", "beatleader", "redbeat", "PersistentScheduler"))
    print("\nratios:")
    for line in runtime_ratios(result):
        print("  " + line)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through the cleanups
    workdir = Path(tempfile.mkdtemp(prefix="beatleader-bench-"))
    keep = args.keep
    load_start = os.getloadavg()
    try:
        results: Results | RuntimeResult
        if args.only_runtime:
            results = measure_runtime_only(args, workdir)
        else:
            results = measure(args, workdir)
    except KeyboardInterrupt:
        progress("interrupted; every process was stopped")
        return 130
    except Exception:
        keep = True  # the beat logs explain what went wrong
        raise
    finally:
        if keep:
            progress(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if isinstance(results, RuntimeResult):
        print_runtime_report(results, load_start)
    else:
        print_report(args, results)
    if args.json:
        dump_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
