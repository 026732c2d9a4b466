"""Throughput: ``entries`` entries each due every second on the Redis broker, no worker, so every
send stays queued. After the first full round and ``--warmup`` seconds, ``LLEN celery`` is
sampled every ``LLEN_EVERY`` s for ``--throughput-seconds``; then the queued messages' headers
give each entry's (sent, late) runs. ``analysis.throughput_result`` turns both into sends/s.
The beats' CPU time (utime + stime of ``/proc/<pid>/stat``, every beat of the setup) is read
just before the first sample and just after the last: CPU seconds per 1,000 sends in the window.
"""

from __future__ import annotations

import ast
import json
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import redis

from scripts.bench.analysis import (
    ThroughputResult,
    cpu_delta,
    late_ms,
    stat_cpu_ticks,
    throughput_result,
)
from scripts.bench.cluster import Beat, Context, stop_all
from scripts.bench.common import (
    FIRST_ROUND_S_PER_ENTRY,
    INTERVAL_S,
    LLEN_EVERY,
    QUEUE,
    SENT_MS_HEADER,
    STARTUP_TIMEOUT,
    now_ms,
    progress,
)
from scripts.bench.report import quantiles
from tests.harness import wait_for


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
    cpu_start = cpu_ticks(beats)
    samples = sample_llen(client, window)
    cpu_s = cpu_delta(cpu_start, cpu_ticks(beats), os.sysconf("SC_CLK_TCK"))
    stop_all(beats)
    sends = queued_sends(client)
    client.flushall()
    result = throughput_result(label, count, entries, samples, sends, cpu_s)
    per_1000 = result.cpu_per_1000_sends
    cpu = "n/a" if per_1000 is None else f"{per_1000:.2f}"
    progress(
        f"  {result.sends_per_s:,.0f} sends/s, lateness p50/p99 {quantiles(result.lateness)}, "
        f"{cpu} CPU-s per 1,000 sends"
    )
    return result


def cpu_ticks(beats: Sequence[Beat]) -> dict[int, int]:
    """pid -> utime + stime in clock ticks of every beat (each must still run)."""
    return {beat.pid: stat_cpu_ticks(Path(f"/proc/{beat.pid}/stat").read_text()) for beat in beats}


def sample_llen(client: redis.Redis, seconds: float) -> list[tuple[int, int]]:
    """(now_ms, LLEN celery) every ``LLEN_EVERY`` seconds for ``seconds``."""
    end = now_ms() + seconds * 1000
    samples: list[tuple[int, int]] = []
    while not samples or samples[-1][0] < end:
        samples.append((now_ms(), int(client.llen(QUEUE))))
        time.sleep(LLEN_EVERY)
    return samples


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
