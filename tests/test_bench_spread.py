"""scripts/bench/spread.py and the plan of scripts/bench/jitter.py on literal samples: the
figures worked out by hand. No process, no server."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from beatleader.schedules import jitter
from scripts.bench.cli import parse_args
from scripts.bench.jitter import Plan, hourly_plan
from scripts.bench.spread import (
    CLOCK_TOLERANCE_S,
    Arrival,
    Spread,
    buckets,
    checks,
    peak_cap,
    peak_per_second,
    spread,
)

T0 = 1_800_000_000.0  # a scheduled minute (epoch seconds)


def test_peak_counts_a_burst_split_across_a_second_boundary_whole() -> None:
    # 0.6 .. 1.4: no whole clock second holds more than 3, but [0.6, 1.6) holds all 5.
    assert peak_per_second([0.6, 0.8, 0.9, 1.2, 1.4]) == 5
    # [t, t + 1) is half-open: 1.0 after 0.0 is in the next window.
    assert peak_per_second([0.0, 1.0, 2.0]) == 1
    assert peak_per_second([0.0, 0.999, 1.0]) == 2
    assert peak_per_second([]) == 0
    assert peak_per_second([5.0, 0.1, 0.2]) == 2  # unordered input


def test_buckets_slice_the_window_and_count_the_rest_apart() -> None:
    found, outside = buckets([0.0, 9.99, 10.0, 59.9, 60.1, -0.1, 35.0], 60)
    assert found == [2, 1, 0, 1, 0, 1]
    assert outside == 2  # 60.1 and -0.1
    assert buckets([1.0, 2.0, 9.0], 10, 5) == ([1, 1, 0, 0, 1], 0)  # slices of 2 s
    # A few milliseconds outside (ZooKeeper's time read on this clock, the publication) counts
    # in the nearest slice; more is outside.
    early, late = -CLOCK_TOLERANCE_S, 10 + CLOCK_TOLERANCE_S
    assert buckets([-0.003, early, early - 0.001, 10.001, late, late - 0.001], 10, 5) == (
        [2, 0, 0, 0, 2],
        2,
    )
    with pytest.raises(ValueError, match="window > 0"):
        buckets([1.0], 0)


def test_spread_of_a_burst_and_of_an_even_fill() -> None:
    burst = [Arrival(f"p{i}", T0 + 0.1 + i * 0.01, 0.002) for i in range(10)]
    plain = spread("without", burst, T0, 60, 10, None, {f"p{i}": T0 for i in range(10)})
    assert (plain.sent, plain.distinct, plain.peak_1s) == (10, 10, 10)
    assert plain.first_s == pytest.approx(0.1)
    assert plain.last_s == pytest.approx(0.19)
    assert plain.spread_s == pytest.approx(0.09)
    assert plain.buckets == (10, 0, 0, 0, 0, 0)
    assert plain.evenness == pytest.approx(6.0)  # everything in one bucket of six
    assert plain.max_offset_error_s == pytest.approx(0.19)
    assert plain.max_delay_s == pytest.approx(0.002)
    even = [Arrival(f"j{i}", T0 + 5 + 10 * i, None) for i in range(6)]
    jittered = spread("with", even, T0, 60, 6, 60)
    assert jittered.buckets == (1, 1, 1, 1, 1, 1)
    assert jittered.evenness == pytest.approx(1.0)
    assert jittered.coverage == pytest.approx(50 / 60)
    assert jittered.peak_1s == 1
    assert (jittered.max_delay_s, jittered.max_offset_error_s) == (None, None)
    empty = spread("none", [], T0, 60, 5)
    assert (empty.sent, empty.spread_s, empty.coverage, empty.evenness) == (0, None, None, None)


def _run(label: str, offsets: list[float], expected: int, window: float = 60) -> Spread:
    arrivals = [Arrival(f"{label}-{i}", T0 + o) for i, o in enumerate(offsets)]
    return spread(label, arrivals, T0, window, expected)


def test_checks_pass_a_burst_beside_an_even_fill() -> None:
    plain = _run("plain", [0.2 + i * 0.001 for i in range(100)], 100)
    jittered = _run("jitter", [i * 0.59 for i in range(100)], 100)  # 0 .. 58.4 s
    found = checks(plain, jittered)
    assert all(c.ok for c in found), [c.text for c in found if not c.ok]
    assert len(found) == 6


def test_checks_fail_what_the_phase_must_not_show() -> None:
    plain = _run("plain", [0.2, 2.5], 3)  # an entry missing, and spread over 2.3 s
    bunched = _run("jitter", [i * 0.01 for i in range(99)] + [59.0], 100)  # peak 99, holes
    failed = [c.text for c in checks(plain, bunched) if not c.ok]
    assert failed == [
        "plain: 2 sends of 3 entries, each once",
        "plain: first..last 2.30 s (at most 2 s)",
        "jitter: peak second 99 sends (at most 10; plain: 1)",
        "jitter: every 10 s bucket holds sends (99, 0, 0, 0, 0, 1)",
    ]
    short = _run("jitter", [i * 0.4 for i in range(100)], 100)  # 0 .. 39.6 s: 66 % of 60
    failed = [c.text for c in checks(plain, short) if not c.ok]
    assert "jitter: first..last covers 66% of the 60 s window (at least 80%)" in failed
    twice = spread("jitter", [Arrival("a", T0 + 1), Arrival("a", T0 + 30)], T0, 60, 2)
    assert not checks(plain, twice)[1].ok  # two sends of one entry: not each entry once


def test_the_peak_cap_is_a_tenth_or_three_times_the_even_rate() -> None:
    assert peak_cap(500, 60) == 50  # a tenth (the even rate is 8.3 a second)
    assert peak_cap(50, 10) == 15  # 5 a second however even: three times that
    assert peak_cap(100, 60) == 10


def test_hourly_plan_is_the_next_whole_minute_after_the_lead_and_wraps_the_hour() -> None:
    now = datetime(2026, 12, 7, 2, 13, 20, 500, tzinfo=timezone.utc)
    plan = hourly_plan(now, 500, 60, lead_s=45)
    assert plan.plain_at == datetime(2026, 12, 7, 2, 15, tzinfo=timezone.utc)  # 02:14:05 -> :15
    assert plan.jittered_at == datetime(2026, 12, 7, 2, 16, tzinfo=timezone.utc)
    assert (plan.plain_crontab, plan.jittered_crontab) == ("15 * * * *", "16 * * * *")
    exact = hourly_plan(datetime(2026, 12, 7, 2, 13, 15, tzinfo=timezone.utc), 1, 60, lead_s=45)
    assert exact.plain_at.minute == 14  # 02:14:00 is at least 45 s away: that minute
    late = hourly_plan(datetime(2026, 12, 7, 23, 58, 10, tzinfo=timezone.utc), 1, 60, lead_s=45)
    assert (late.plain_crontab, late.jittered_crontab) == ("59 * * * *", "0 * * * *")
    assert late.jittered_at == datetime(2026, 12, 8, 0, 0, tzinfo=timezone.utc)
    wrap = hourly_plan(datetime(2026, 12, 7, 2, 59, 30, tzinfo=timezone.utc), 1, 60, lead_s=45)
    assert (wrap.plain_crontab, wrap.jittered_crontab) == ("1 * * * *", "2 * * * *")
    assert wrap.plain_at.hour == 3


def test_the_plan_schedules_both_sets_and_knows_their_due_times() -> None:
    at = datetime(2026, 12, 7, 2, 15, tzinfo=timezone.utc)
    plan = Plan(2, 10, at, at.replace(minute=16), "15 * * * *", "16 * * * *")
    assert plan.schedule() == {
        "plain-000": {"crontab": "15 * * * *"},
        "plain-001": {"crontab": "15 * * * *"},
        "jitter-000": {"crontab": "16 * * * *", "options": {"beatleader": {"jitter": "10s"}}},
        "jitter-001": {"crontab": "16 * * * *", "options": {"beatleader": {"jitter": "10s"}}},
    }
    due = plan.due()
    assert due["plain-001"] == at.timestamp()
    offset = jitter.offset("jitter-001", 1, 10)
    assert 0 < offset < 10
    assert due["jitter-001"] == at.timestamp() + 60 + offset


def test_the_jitter_flags_and_their_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["--only-jitter"])
    assert (args.only_jitter, args.jitter_entries, args.jitter_window) == (True, 500, 60)
    for bad, message in [
        (["--only-jitter", "--only-guard"], "--only-jitter goes with none of"),
        (["--jitter-window", "0"], "--jitter-window must be in [1, 600] seconds"),
        (["--jitter-entries", "1000"], "--jitter-entries must be in [1, 999]"),
    ]:
        with pytest.raises(SystemExit) as exited:
            parse_args(bad)
        assert exited.value.code == 2
        assert message in capsys.readouterr().err
