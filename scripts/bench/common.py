"""What every part of the benchmark shares: the schedulers compared, the one entry and its
interval, the headers ``scripts/bench_app.py`` stamps, the clock of every send time, progress.

Importing it starts nothing and reads nothing: it is the only module the analysis depends on.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
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
#: A throughput send later than this against its due time counts as late.
LATE_MS = 1000
#: The throughput phase samples ``LLEN celery`` this often (seconds).
LLEN_EVERY = 0.1
STARTED = time.monotonic()


def now_ms() -> int:
    """CLOCK_MONOTONIC in ms: the clock of every send time measured here."""
    return int(time.monotonic() * 1000)


def progress(message: str) -> None:
    """A progress line on stderr (the results go to stdout)."""
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def sleep_until(deadline_ms: float) -> None:
    time.sleep(max(0.0, (deadline_ms - now_ms()) / 1000))
