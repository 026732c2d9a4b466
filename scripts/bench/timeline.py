"""Failover timelines of a leader-elected cluster (beatleader or redbeat, ``--instances`` beats).

One entry due every second on kombu's filesystem broker for ``--seconds``; the clock starts
after the first sends. At 1/3 of the run the leader (the sender of the latest send) gets
SIGKILL, at 2/3 the new leader gets SIGTERM, each ``--signal-phase`` seconds after one of its
sends so that every scheduler is hit at the same point of its cycle. The sends recorded between
start and end go to ``analysis.analyse_timeline``: failover latency, largest gap, steady
lateness, duplicates.
"""

from __future__ import annotations

import signal

from scripts.bench.analysis import Event, TimelineResult, analyse_timeline
from scripts.bench.cluster import Context, read_sends, stop_all, wait_for_sends
from scripts.bench.common import now_ms, progress, sleep_until
from scripts.bench.report import quantiles
from tests.harness import FilesystemBroker


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
