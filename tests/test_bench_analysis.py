"""scripts/bench/analysis.py on recorded samples: literal sends, signals and queue samples, and
the figures worked out by hand (the entry is due every 1,000 ms). No process, no server."""

from __future__ import annotations

import math

import pytest

from scripts.bench.analysis import (
    Event,
    GuardResult,
    Send,
    analyse_persistent,
    analyse_timeline,
    close_sends,
    combine_rounds,
    cpu_delta,
    cpu_per_1000,
    due_lateness,
    execution_rate,
    failover,
    gap_lateness,
    guard_result,
    in_any,
    late_ms,
    origin_pid,
    percentile,
    repeated_ids,
    senders,
    stat_cpu_ticks,
    sustained_rate,
    throughput_ratio,
    throughput_result,
)
from scripts.bench.report import cpu_text, guard_lines, guard_rows, quantiles, ratio
from scripts.bench.targets import cpu_target, lateness_targets, throughput_target

# A timeline of three instances. Pid 100 leads and gets SIGKILL at 2,505 (500 ms after its send
# at 2,005); pid 200 republishes the victim's last run "c" (same task id: not a new run) at 4,600
# and sends the next run "d" at 4,700; it gets SIGTERM at 7,201 and pid 300 sends "g" at 7,700.
TIMELINE = [
    Send(0, 100, "a", 0.5),
    Send(1002, 100, "b", 0.7),
    Send(2005, 100, "c", 1.0),
    Send(4600, 200, "c", None),
    Send(4700, 200, "d", 1700.0),
    Send(5700, 200, "e", 1.5),
    Send(6701, 200, "f", 2.5),
    Send(7700, 300, "g", 0.9),
    Send(8700, 300, "h", 1.1),
    Send(9701, 300, "i", 0.8),
]
SIGKILL = Event("SIGKILL", 2505, 100)
SIGTERM = Event("SIGTERM", 7201, 200)


def test_crash_failover_skips_the_republished_run() -> None:
    crash = failover(TIMELINE, SIGKILL)
    # The first send after the signal by another pid is the republished "c" at 4,600: not new.
    assert crash.successor == 200
    assert crash.latency_ms == 4700 - 2505 == 2195
    # Across: 2,005 (last before) -> 4,600 -> 4,700.
    assert crash.max_gap_ms == 4600 - 2005 == 2595
    assert crash.window == (2505, 4700)


def test_graceful_handoff_of_one_interval_is_seamless() -> None:
    handoff = failover(TIMELINE, SIGTERM)
    assert (handoff.successor, handoff.latency_ms, handoff.max_gap_ms) == (300, 499, 999)
    assert handoff.window == (7201, 7700)


def test_failover_without_a_successor_is_open_ended() -> None:
    # After the signal only the victim sends, and another pid only a run sent before it.
    sends = [Send(0, 1, "a", 1.0), Send(1000, 1, "b", 1.0), Send(2000, 2, "b", None)]
    result = failover(sends, Event("SIGKILL", 1500, 1))
    assert (result.latency_ms, result.max_gap_ms, result.successor) == (None, None, None)
    assert result.window == (1500, math.inf)
    assert due_lateness(sends, [result.window]) == [1.0, 1.0]


def test_failover_with_no_send_before_the_signal_has_no_gap() -> None:
    result = failover([Send(3000, 2, "x", None)], Event("SIGKILL", 1000, 1))
    assert (result.latency_ms, result.max_gap_ms, result.successor) == (2000, None, 2)


def test_timeline_figures_leave_the_failover_windows_out() -> None:
    result = analyse_timeline("beatleader", (0, 10_000), TIMELINE, [SIGKILL, SIGTERM])
    assert result.seconds == 10.0
    # Out: 4,600 (no header), 4,700 and 7,700 (last moments of the two windows, inclusive).
    assert result.lateness == [0.5, 0.7, 1.0, 1.5, 2.5, 1.1, 0.8]
    # Same-pid pairs with both sends outside: 0->1,002, 1,002->2,005, 5,700->6,701,
    # 8,700->9,701 (4,600->4,700 and 4,700->5,700 and 7,700->8,700 touch a window).
    assert result.gap_lateness == [2, 3, 1, 1]
    assert result.duplicates == 1  # 4,600 -> 4,700
    assert result.repeated_task_ids == 1  # "c"
    assert percentile(result.lateness, 50) == 1.0
    assert percentile(result.lateness, 99) == 2.5


def test_gap_lateness_is_signed_and_per_instance() -> None:
    sends = [Send(0, 1, "a", None), Send(990, 1, "b", None), Send(2000, 1, "c", None)]
    sends += [Send(2400, 2, "d", None), Send(3000, 1, "e", None)]
    assert gap_lateness(sends) == [-10, 10]
    assert close_sends(sends) == 1  # 2,000 -> 2,400 (different pids count too)


def test_duplicates_are_closer_than_half_an_interval_from_any_instance() -> None:
    # Two PersistentSchedulers out of phase: 10 and 1,499 are duplicates, 2,000 (501 ms after)
    # and 2,500 (exactly half an interval after) are not.
    group = [Send(0, 1, "a", None), Send(10, 2, "b", None), Send(1000, 1, "c", None)]
    group += [Send(1499, 2, "d", None), Send(2000, 1, "e", None), Send(2500, 2, "f", None)]
    assert close_sends(group) == 2
    assert senders(group) == 2
    assert repeated_ids(group) == 0
    alone = [Send(0, 1, "a", 3.0), Send(1004, 1, "b", 4.0)]
    result = analyse_persistent(alone, group, 2.5)
    assert (result.lateness, result.gap_lateness, result.duplicates) == ([3.0, 4.0], [4], 2)
    assert (result.group_seconds, result.single_sends, result.group_sends) == (2.5, alone, group)


def test_percentile_is_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 50) == 3.0  # rank ceil(2.5) = 3
    assert percentile(values, 20) == 1.0  # rank 1
    assert percentile(values, 21) == 2.0  # rank ceil(1.05) = 2
    assert percentile(values, 99) == 5.0
    assert percentile(values, 0) == 1.0
    assert percentile([], 50) is None
    assert percentile([float(v) for v in range(1, 11)], 90) == 9.0


def test_windows_are_inclusive() -> None:
    assert in_any(10, [(10, 20)]) and in_any(20, [(10, 20)])
    assert not in_any(9, [(10, 20)]) and not in_any(21, [(10, 20)])
    assert in_any(10**9, [(0, 5), (7, math.inf)])
    assert not in_any(6, [(0, 5), (7, math.inf)])


def test_headers() -> None:
    assert origin_pid({"origin": "gen4581@host.example"}) == 4581
    assert late_ms({"bench_late_ms": "12.5"}) == 12.5
    assert late_ms({"bench_late_ms": 0}) == 0.0
    assert late_ms({"bench_sent_ms": 1}) is None


def test_throughput_slope_endpoints_and_late_sends() -> None:
    # A burst of 100 lands just before the last sample: the endpoints say 100/s, the slope 90/s.
    samples = [(1000, 0), (1500, 50), (2000, 100), (2500, 100), (3000, 200)]
    sends = {
        "e0": [(900, 5.0), (1000, 2.0), (2000, 1500.0), (3000, 3.0), (3100, 7.0)],
        "e1": [(1100, 1001.0), (2600, 1000.0)],
        "e2": [(1200, 4.0)],
    }
    result = throughput_result("beatleader", 3, 50, samples, sends)
    assert (result.label, result.instances, result.entries) == ("beatleader", 3, 50)
    assert result.window_s == 2.0
    # slope = sum dx*dy / sum dx^2 = 225,000 / 2,500,000 per ms.
    assert result.sends_per_s == pytest.approx(90.0)
    assert result.endpoint_per_s == 100.0
    # In [1,000, 3,000] only; e0: 2 periods in 2,000 ms, e1: 1 in 1,500 ms, e2: none.
    assert result.lateness == [2.0, 1500.0, 3.0, 1001.0, 1000.0, 4.0]
    assert result.late == 2  # 1,500 and 1,001; 1,000 is not late by more than 1 s
    assert result.sustained_per_s == pytest.approx(1.0 + 2 / 3)
    assert result.llen_samples == samples
    assert result.sends_in_window == 200
    assert (result.cpu_s, result.cpu_per_1000_sends) == (None, None)
    assert cpu_text(result) == "n/a"


def test_throughput_cpu_per_1000_sends_of_the_window() -> None:
    samples = [(1000, 100), (2000, 1100), (3000, 2100)]
    result = throughput_result("persistent", 1, 1000, samples, {}, cpu_s=0.8)
    # 2,000 sends queued between the first and the last sample cost 0.8 CPU-s.
    assert result.sends_in_window == 2000
    assert result.cpu_per_1000_sends == pytest.approx(0.4)
    assert cpu_text(result) == "0.40 CPU-s (0.8 s / 2,000 sends)"


# /proc/<pid>/stat of a process whose name holds a space and a parenthesis: utime 1234 and
# stime 56 are fields 14 and 15; the fields around them (12: majflt 7, 16: cutime 99) must not
# count.
STAT = "4242 (celery) (x) S 1 4242 4242 0 -1 4194560 8814 0 7 0 1234 56 99 3 20 0 3 0 9 1 2 3"


def test_stat_cpu_ticks_counts_utime_and_stime_after_the_name() -> None:
    assert stat_cpu_ticks(STAT) == 1234 + 56
    assert stat_cpu_ticks(STAT.replace("(celery) (x)", "(beat)")) == 1290


def test_cpu_delta_sums_every_beat_and_refuses_a_partial_reading() -> None:
    assert cpu_delta({1: 100, 2: 50}, {1: 250, 2: 60}, 100) == pytest.approx(1.6)
    with pytest.raises(ValueError, match="pids"):
        cpu_delta({1: 100, 2: 50}, {1: 250}, 100)


def test_cpu_per_1000_needs_a_reading_and_a_send() -> None:
    assert cpu_per_1000(1.5, 3000) == pytest.approx(0.5)
    assert cpu_per_1000(None, 3000) is None
    assert cpu_per_1000(1.5, 0) is None


def test_sustained_rate_needs_two_distinct_send_times() -> None:
    runs = {"same": [(1000, 0.0), (1000, 0.0)], "one": [(1500, 0.0)], "out": [(0, 0.0), (10, 0.0)]}
    assert sustained_rate(runs, 1000, 2000) == 0.0
    assert sustained_rate({"e": [(1000, 0.0), (1250, 0.0), (1500, 0.0)]}, 1000, 2000) == 4.0


def test_figures_as_the_report_prints_them() -> None:
    assert quantiles([0.5, 0.7, 1.0, 1.5, 2.5, 1.1, 0.8]) == "1.0 ms / 2.5 ms (n=7)"
    assert quantiles([2195.0, 40.0]) == "40.0 ms / 2,195 ms (n=2)"
    assert quantiles([]) == "n/a / n/a (n=0)"
    assert ratio(2195, 1528) == "1.44"
    assert ratio(None, 1528) == ratio(0, 1528) == "n/a (a value is missing or <= 0)"


# -- the guard phase -----------------------------------------------------------------------------


def test_execution_rate_counts_intervals_from_first_to_last() -> None:
    # 5 executions over 2 s: 4 intervals, 2 per second; the order they are read in is irrelevant.
    assert execution_rate([10.5, 10.0, 11.0, 12.0, 11.5]) == (2.0, 2.0)
    assert execution_rate([3.0]) == (0.0, None)
    assert execution_rate([3.0, 3.0]) == (0.0, None)


def test_guard_result_counts_requests_and_repeated_ids() -> None:
    executions = [(100.0, "a"), (100.5, "b"), (101.0, "b"), (102.0, "c")]
    result = guard_result("guarded, history 0", True, 0, 4, executions, (1_000, 1_040))
    assert (result.executions, result.repeated_ids, result.seconds) == (4, 1, 2.0)
    assert result.per_s == 1.5
    assert (result.zk_requests, result.requests_per_run) == (40, 10.0)
    unguarded = guard_result("unguarded", False, None, 4, executions, None)
    assert (unguarded.zk_requests, unguarded.requests_per_run) == (None, None)


def test_rounds_combine_to_the_median_round_rate() -> None:
    one = guard_result("g", True, 20, 3, [(0.0, "a"), (1.0, "b"), (2.0, "c")], (0, 30))
    two = guard_result("g", True, 20, 3, [(50.0, "a"), (50.5, "b"), (51.0, "c")], (30, 60))
    slow = guard_result("g", True, 20, 3, [(90.0, "a"), (95.0, "b"), (100.0, "c")], (60, 90))
    rounds = combine_rounds([one, two, slow])
    # Rates 1, 2 and 0.2 per second: the median, not 6 intervals over 13 s or over 100 s.
    assert (rounds.runs, rounds.executions, rounds.seconds) == (9, 9, 13.0)
    assert rounds.round_rates == [1.0, 2.0, 0.2]
    assert rounds.per_s == 1.0
    assert (rounds.zk_requests, rounds.requests_per_run) == (90, 10.0)
    assert combine_rounds([one, two]).per_s == 1.5
    unguarded = guard_result("u", False, None, 3, [(0.0, "a"), (1.0, "b"), (2.0, "c")], None)
    assert combine_rounds([unguarded, unguarded]).zk_requests is None


def test_guard_table_ratios_and_the_history_bar() -> None:
    def result(label: str, guarded: bool, history: int | None, span: float) -> GuardResult:
        executions = [(i * span / 100, f"{label}-{i}") for i in range(101)]  # 100 / span per s
        return guard_result(label, guarded, history, 101, executions, (0, 808) if guarded else None)

    results = [
        result("unguarded", False, None, 0.1),  # 1,000/s
        result("guarded, history 0", True, 0, 0.4),  # 250/s
        result("guarded, history 20", True, 20, 0.5),  # 200/s
    ]
    rows = guard_rows(results)
    assert rows == [
        ("unguarded", "1 x 101", "1,000", "1.00", "", ""),
        ("guarded, history 0", "1 x 101", "250", "0.25", "1.00", "8.00"),
        ("guarded, history 20", "1 x 101", "200", "0.20", "0.80", "8.00"),
    ]
    lines = guard_lines(results)
    assert lines[0] == "history 20 / history 0 = 0.80: within the 20 % bar (>= 0.80)"
    assert throughput_ratio(150, 250) == 0.6
    assert throughput_ratio(None, 250) is None


def test_lateness_targets_against_persistent_scheduler() -> None:
    p99, p50 = lateness_targets(1.2, 9.0, 4.6)
    assert (p99.verdict, p99.found) == ("PASS", "9.0 ms vs bound 9.2 ms (1.96x)")
    assert (p50.verdict, p50.found) == ("PASS", "1.2 ms")
    p99, p50 = lateness_targets(1.6, 9.3, 4.6)
    assert (p99.passed, p50.passed) == (False, False)
    assert [t.verdict for t in lateness_targets(None, 1.0, None)] == ["n/a", "n/a"]


def test_throughput_targets_only_at_1000_and_4000_entries() -> None:
    at_1000 = throughput_target(1000, 936.0, 468.0)
    assert at_1000 is not None and (at_1000.found, at_1000.verdict) == ("2.00x", "PASS")
    at_4000 = throughput_target(4000, 2000.0, 251.0)
    assert at_4000 is not None and (at_4000.found, at_4000.verdict) == ("7.97x", "FAIL")
    assert throughput_target(2000, 1.0, 1.0) is None
    missing = throughput_target(1000, None, 468.0)
    assert missing is not None and missing.passed is None


def test_cpu_target_allows_the_noise_and_says_so() -> None:
    assert cpu_target(1000, 0.40, 0.40).verdict == "PASS"
    within = cpu_target(1000, 0.43, 0.40)
    assert within.passed is True and "noise" in within.verdict
    assert cpu_target(1000, 0.45, 0.40).verdict.startswith("FAIL")
    assert cpu_target(1000, None, 0.40).verdict == "n/a"
