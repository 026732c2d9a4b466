"""celery's PersistentScheduler, the baseline without failover: one instance alone for
``--baseline-seconds`` (its steady lateness), then ``--instances`` - 1 more on the same schedule
for ``--dup-seconds`` (the duplicates N of them send, which a leader election exists to avoid).
"""

from __future__ import annotations

from collections.abc import Sequence

from scripts.bench.analysis import PersistentResult, analyse_persistent
from scripts.bench.cluster import Beat, Context, read_sends, stop_all, wait_for_sends
from scripts.bench.common import PERSISTENT, STARTUP_TIMEOUT, now_ms, progress, sleep_until
from tests.harness import FilesystemBroker, wait_for


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
    return analyse_persistent(alone, group, (group_end - group_start) / 1000)


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
