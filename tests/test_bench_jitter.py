"""The benchmark's jitter phase (scripts/bench/jitter.py) scaled down, end to end: a real
``celery beat -S beatleader`` on a ZooKeeper and a Redis of the test's own, 50 entries on
``M * * * *`` without jitter and 50 with ``jitter: 10s``, both due at the next whole minute M;
every message taken off Redis as it lands (``run_plan``). Up to about 80 s (the next minute), so
slow. Without jitter every entry lands within 2 s of the minute; with it, each entry once, at
its own offset (``jitter.offset``), the sends over most of the 10 s and a far lower peak second.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis

from scripts.bench.cluster import Fleet, base_env, servers
from scripts.bench.jitter import Plan, hourly_plan, run_plan
from scripts.bench.spread import CLOCK_TOLERANCE_S

ENTRIES = 50
WINDOW = 10.0


@pytest.mark.slow
def test_the_jitter_phase_spreads_a_minute_crontab(tmp_path: Path) -> None:
    at = hourly_plan(datetime.now(timezone.utc), ENTRIES, WINDOW, lead_s=10).plain_at
    # That minute only (an hourly spec): with "* * * * *" a beat that leads before the minute
    # ahead of ``at`` also sends that minute's runs (100 sends of 50 entries, seen in CI).
    spec = f"{at.minute} * * * *"
    plan = Plan(ENTRIES, WINDOW, at, at, spec, spec)
    with servers(tmp_path) as (zk, rd):
        fleet = Fleet(tmp_path, base_env(zk.hosts, rd.url, argparse.Namespace(session_timeout=2)))
        try:
            result = run_plan(fleet, zk.hosts, redis.Redis.from_url(rd.url), plan)
        finally:
            fleet.close()
    plain, jittered = result.plain, result.jittered
    assert (plain.sent, plain.distinct, jittered.sent, jittered.distinct) == (50, 50, 50, 50)
    # On ZooKeeper's time, which this machine's clock may read a few milliseconds ahead of.
    assert plain.first_s is not None and plain.first_s >= -CLOCK_TOLERANCE_S
    assert plain.spread_s is not None and plain.spread_s <= 2.0
    assert plain.peak_1s == ENTRIES
    assert jittered.outside == plain.outside == 0
    # Each jittered send at its own offset (the beat wakes at least every 1 s, the commit lead).
    assert jittered.max_offset_error_s is not None and jittered.max_offset_error_s < 1.5
    assert jittered.coverage is not None and jittered.coverage >= 0.7
    assert jittered.peak_1s <= ENTRIES // 2
