"""Jitter: 500 entries on an hourly crontab, sent without and with ``jitter`` (celery #2301).

celery users' complaint: 500 entries on ``0 * * * *`` hit the workers in the same second.
This phase (``--only-jitter`` runs it alone, about 3 to 4 minutes; ``--skip-jitter``) shows what
``options.beatleader.jitter`` does about it, on a ZooKeeper and a Redis (the broker) of its own:

* ONE ``celery beat -S beatleader`` (``scripts/bench_app.py``) with two sets of
  ``--jitter-entries`` (500) static entries in ``beat_schedule``: ``plain-NNN`` on the hourly
  crontab ``M * * * *`` and ``jitter-NNN`` on ``M+1 * * * *`` with
  ``"options": {"beatleader": {"jitter": "<--jitter-window>s"}}`` (60 s). ``M`` is the first
  whole minute at least ``LEAD_S`` (45 s) from now (UTC, the app's timezone; 59 + 1 is minute 0
  of the next hour), so both are genuine hourly crontabs whose next run is 1 to 2 minutes away;
  the plain burst is over long before the jittered window opens.
* The beat must lead, with all its entries in ZooKeeper, before ``M``: otherwise the phase
  stops with an error (a takeover's catch-up is not what is measured here).
* No worker: this process takes every message off the broker as it lands (``BRPOP celery``) and
  stamps it with the wall clock: that is the arrival time measured, from the scheduled minute.
  The beat's own ``bench_sent_ms`` stamp (at publication) gives the publication -> consumer
  delay, printed as a check that the consumer kept up.
* Each set's window is ``[scheduled, scheduled + --jitter-window)``; ``spread.py`` computes the
  figures (count, first..last, peak second, sends per sixth of the window, fullest / mean
  bucket, the largest distance between an arrival and its due time: the scheduled minute, plus
  ``jitter.offset(name, 1, window)`` for a jittered entry) and the PASS / FAIL checks.

Guarantees: every figure printed is computed from this run's arrivals; the beat and the servers
are stopped on the way out. Not guaranteed: the arrivals of a loaded machine (the load average
is printed around the phase).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import redis

from beatleader.ops.status import read_status
from beatleader.schedules import jitter
from beatleader.testing.localproc import LoggedProcess
from scripts.bench.cluster import Context, Fleet, base_env, servers
from scripts.bench.common import BEATLEADER, QUEUE, SENT_MS_HEADER, now_ms, progress
from scripts.bench.report import print_table
from scripts.bench.spread import Arrival, Spread, checks, spread
from tests.harness import connected_client, wait_for

__all__ = [
    "JitterResult",
    "Plan",
    "hourly_plan",
    "measure_jitter_only",
    "print_jitter",
    "run_jitter",
    "run_plan",
]

#: The plain set's minute is the first whole minute at least this far away (seconds): the beat
#: starts, leads and writes its entries meanwhile.
LEAD_S = 45.0
#: The beat must lead with every entry at least this long before the plain set's minute.
READY_MARGIN_S = 1.0
#: Seconds the consumer keeps taking messages after the jittered window closes.
GRACE_S = 5.0
PLAIN = "plain"
JITTERED = "jitter"
ROOT = "/bench/jitter"


@dataclass(frozen=True)
class Plan:
    """Two sets of ``entries`` entries: ``plain`` at ``plain_at``, ``jittered`` at
    ``jittered_at`` with jitter ``window_s``."""

    entries: int
    window_s: float
    plain_at: datetime
    jittered_at: datetime
    plain_crontab: str
    jittered_crontab: str

    def names(self, prefix: str) -> list[str]:
        return [f"{prefix}-{i:03d}" for i in range(self.entries)]

    def schedule(self) -> dict[str, dict[str, Any]]:
        """``TEST_SCHEDULE`` (``tests.app``): both sets, the jittered one with its option."""
        option = {"beatleader": {"jitter": f"{self.window_s:g}s"}}
        found: dict[str, dict[str, Any]] = {
            n: {"crontab": self.plain_crontab} for n in self.names(PLAIN)
        }
        for name in self.names(JITTERED):
            found[name] = {"crontab": self.jittered_crontab, "options": option}
        return found

    def due(self) -> dict[str, float]:
        """Entry name -> epoch seconds its first run is due (the offset of ordinal 1)."""
        found = {name: self.plain_at.timestamp() for name in self.names(PLAIN)}
        start = self.jittered_at.timestamp()
        for name in self.names(JITTERED):
            found[name] = start + jitter.offset(name, 1, self.window_s)
        return found


def hourly_plan(now: datetime, entries: int, window_s: float, lead_s: float = LEAD_S) -> Plan:
    """``M * * * *`` at the first whole minute at least ``lead_s`` after ``now`` (UTC), and
    ``M+1 * * * *`` (minute 0 after 59) for the jittered set."""
    earliest = now.astimezone(timezone.utc) + timedelta(seconds=lead_s)
    first = earliest.replace(second=0, microsecond=0)
    if first < earliest:
        first += timedelta(minutes=1)
    second = first + timedelta(minutes=1)
    return Plan(
        entries, window_s, first, second, f"{first.minute} * * * *", f"{second.minute} * * * *"
    )


@dataclass(frozen=True)
class JitterResult:
    plan: Plan
    plain: Spread
    jittered: Spread
    #: Seconds before the plain set's minute at which the beat led with all its entries.
    ready_before_s: float
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]


def measure_jitter_only(args: argparse.Namespace, workdir: Path) -> JitterResult:
    """The phase on a ZooKeeper and a Redis of its own (in ``workdir/jitter``)."""
    folder = workdir / "jitter"
    folder.mkdir()
    with servers(folder) as (zk, rd):
        fleet = Fleet(folder, base_env(zk.hosts, rd.url, args))
        try:
            return run_jitter(Context(args, folder, fleet, rd.url, zk))
        finally:
            fleet.close()


def run_jitter(ctx: Context) -> JitterResult:
    """The hourly plan of ``--jitter-entries`` and ``--jitter-window``, starting now."""
    plan = hourly_plan(datetime.now(timezone.utc), ctx.args.jitter_entries, ctx.args.jitter_window)
    return run_plan(ctx.fleet, ctx.zk.hosts, ctx.redis(), plan)


def run_plan(fleet: Fleet, zk_hosts: str, client: redis.Redis, plan: Plan) -> JitterResult:
    """One beat with both sets of ``plan``; every arrival taken off the broker until the
    jittered window closed and ``GRACE_S`` more."""
    load_start = os.getloadavg()
    client.flushall()
    progress(
        f"jitter: {plan.entries} entries on {plan.plain_crontab!r} at {plan.plain_at:%H:%M} UTC, "
        f"{plan.entries} with jitter {plan.window_s:g} s on {plan.jittered_crontab!r} at "
        f"{plan.jittered_at:%H:%M} UTC"
    )
    env = {"TEST_SCHEDULE": json.dumps(plan.schedule()), "BEATLEADER_PATH": ROOT}
    beat = fleet.start("jitter", 1, BEATLEADER, env)[0]
    try:
        ready_before_s = wait_ready(zk_hosts, plan, beat.log_tail)
        progress(f"  the beat leads with {2 * plan.entries} entries, {ready_before_s:.1f} s before")
        end = plan.jittered_at.timestamp() + plan.window_s + GRACE_S
        arrivals = consume(client, set(plan.due()), end, beat)
    finally:
        beat.stop()
        client.flushall()
    due = plan.due()
    window = plan.window_s
    by_set = {
        prefix: [a for a in arrivals if a.name.startswith(f"{prefix}-")]
        for prefix in (PLAIN, JITTERED)
    }
    plain = spread(
        "without jitter", by_set[PLAIN], plan.plain_at.timestamp(), window, plan.entries, None, due
    )
    jittered = spread(
        f"jitter {window:g} s",
        by_set[JITTERED],
        plan.jittered_at.timestamp(),
        window,
        plan.entries,
        window,
        due,
    )
    progress(
        f"  without jitter: {plain.sent} sends, peak second {plain.peak_1s}; with jitter: "
        f"{jittered.sent} sends, peak second {jittered.peak_1s}"
    )
    return JitterResult(plan, plain, jittered, ready_before_s, load_start, os.getloadavg())


def wait_ready(zk_hosts: str, plan: Plan, log_tail: Callable[[int], str]) -> float:
    """Seconds before ``plan.plain_at`` at which the beat led with every entry of the plan."""
    names = set(plan.due())
    deadline = plan.plain_at.timestamp() - READY_MARGIN_S

    def ready() -> bool:
        status = read_status(client, ROOT)
        scheduled = {e.name for e in status.entries if e.plan is not None}
        return status.leader is not None and names <= scheduled

    with connected_client(zk_hosts) as client:
        try:
            wait_for(ready, max(deadline - time.time(), 0.0), interval=0.5)
        except AssertionError:
            raise RuntimeError(
                f"jitter: the beat did not lead with its {len(names)} entries by "
                f"{READY_MARGIN_S:g} s before {plan.plain_at:%H:%M:%S} UTC; log tail:\n"
                + log_tail(30)
            ) from None
    return plan.plain_at.timestamp() - time.time()


def consume(client: redis.Redis, names: set[str], end: float, beat: LoggedProcess) -> list[Arrival]:
    """Every message of ``names`` taken off ``QUEUE`` until ``end`` (epoch seconds), stamped
    with the wall clock as it is taken (a second send of an entry is kept: it is counted). The
    beat must live on."""
    arrivals: list[Arrival] = []
    while time.time() < end:
        if not beat.alive:
            raise RuntimeError(f"jitter: the beat exited; log tail:\n{beat.log_tail(30)}")
        popped = client.brpop([QUEUE], timeout=1)
        if popped is None:
            continue
        at, taken_ms = time.time(), now_ms()
        headers = json.loads(popped[1])["headers"]
        name = ast.literal_eval(headers["argsrepr"])[0]
        if name not in names:
            continue
        sent_ms = headers.get(SENT_MS_HEADER)
        delay = None if sent_ms is None else (taken_ms - int(sent_ms)) / 1000
        arrivals.append(Arrival(name, at, delay))
    return arrivals


def print_jitter(result: JitterResult) -> None:
    plan, plain, jittered = result.plan, result.plain, result.jittered
    print(
        f"\n== jitter: {plan.entries} entries on an hourly crontab, without and with jitter "
        f"{plan.window_s:g} s (one celery beat -S beatleader, Redis broker) =="
    )
    print(
        f"without jitter: {plan.plain_crontab!r} at {plan.plain_at:%Y-%m-%d %H:%M:%S} UTC; "
        f"with jitter: {plan.jittered_crontab!r} at {plan.jittered_at:%H:%M:%S} UTC; the beat led "
        f"with its {2 * plan.entries} entries {result.ready_before_s:.1f} s before"
    )
    width = plan.window_s / len(plain.buckets)
    rows = [
        ("sends (distinct entries)", *(f"{r.sent} ({r.distinct})" for r in (plain, jittered))),
        (
            "first .. last, after the scheduled minute",
            *(f"{_s(r.first_s)} .. {_s(r.last_s)}" for r in (plain, jittered)),
        ),
        ("spread (first..last)", *(_s(r.spread_s) for r in (plain, jittered))),
        ("first..last / window", *(_pct(r.coverage) for r in (plain, jittered))),
        ("peak sends in any one second", *(str(r.peak_1s) for r in (plain, jittered))),
        (
            f"sends per {width:.3g} s of the window",
            *(" ".join(map(str, r.buckets)) for r in (plain, jittered)),
        ),
        ("fullest / mean bucket (1 = even)", *(_x(r.evenness) for r in (plain, jittered))),
        ("sends outside the window", *(str(r.outside) for r in (plain, jittered))),
        (
            "largest |arrival - due time|",
            *(_s(r.max_offset_error_s) for r in (plain, jittered)),
        ),
        ("largest publication -> consumer", *(_s(r.max_delay_s) for r in (plain, jittered))),
    ]
    print_table(rows, ("", plain.label, jittered.label))
    found = checks(plain, jittered)
    for check in found:
        print(f"  {'ok  ' if check.ok else 'FAIL'}  {check.text}")
    verdict = "PASS" if all(c.ok for c in found) else "FAIL"
    print(
        f"jitter: {verdict} (load average {result.load_start[0]:.2f} -> {result.load_end[0]:.2f})"
    )


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} s" if value < 0 else f"{value:.2f} s"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
