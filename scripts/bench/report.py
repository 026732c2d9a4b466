"""The report: the table, the ratios against celery's PersistentScheduler and redbeat, the details
and the legend on stdout, and ``--json``; made only from the figures in ``Results``.

Times are printed in ms (one decimal under 100 ms), ratios as beatleader / baseline with two
decimals ("n/a" when a value is missing or <= 0). Nothing here measures or starts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

from scripts.bench.analysis import (
    GuardResult,
    PersistentResult,
    ThroughputResult,
    TimelineResult,
    percentile,
    senders,
    throughput_ratio,
)
from scripts.bench.common import INTERVAL_MS, INTERVAL_S, LLEN_EVERY, MAX_LOOP_INTERVAL, progress
from scripts.bench_runtime import TAKEOVER_TARGET_S, RuntimeResult

Row = tuple[str, str, str, str]


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
    guard: list[GuardResult] | None = None


@dataclass
class GuardResults:
    """The guard phase alone (``--only-guard``): its variants and the load average around it."""

    guard: list[GuardResult]
    settings: str
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]


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
        (
            "  CPU per 1,000 sends (beats' utime+stime)",
            cpu_text(bl),
            "not measured",
            cpu_text(ps),
        ),
    ]


def cpu_text(result: ThroughputResult) -> str:
    """``0.40 CPU-s (6.0 s / 15,000 sends)``; n/a when not measured."""
    if result.cpu_per_1000_sends is None or result.cpu_s is None:
        return "n/a"
    return (
        f"{result.cpu_per_1000_sends:.2f} CPU-s ({result.cpu_s:.1f} s / "
        f"{result.sends_in_window:,} sends)"
    )


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
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
            cpu = (by["beatleader"].cpu_per_1000_sends, by["persistent"].cpu_per_1000_sends)
            pairs.append((f"CPU/1,000 sends {entries:,}", "PersistentScheduler", *cpu))
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
            f"over {t.window_s:.1f} s (ideal {t.entries / INTERVAL_S:,.0f}/s); CPU {cpu_text(t)}"
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
        "of all entries); per-entry periods: sum of 1 / mean period between an entry's sends; "
        "CPU per 1,000 sends: utime + stime (/proc/<pid>/stat) of every beat of the setup, read "
        "just before the first and just after the last sample, / the sends queued in between",
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
    if res.guard is not None:
        print()
        print_guard_table(res.guard)
    sections = [
        (
            "ratios beatleader / baseline (times and CPU: < 1 is better for beatleader; "
            "throughput: > 1)",
            ratio_lines(res) + (runtime_ratios(res.runtime) if res.runtime is not None else []),
        ),
        ("details", detail_lines(res)),
        ("what is measured", ["- " + line for line in legend(args)]),
        *([] if res.guard is None else [("guard phase", ["- " + x for x in guard_legend(args)])]),
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
        + (" --skip-guard" if args.skip_guard else f" {guard_settings(args)}")
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


def dump_json(
    path: str, args: argparse.Namespace, res: Results | RuntimeResult | GuardResults
) -> None:
    data = {"settings": vars(args), "nproc": os.cpu_count(), **asdict(res)}
    text = json.dumps(data, indent=1, default=str)
    if path == "-":
        print(text)
    else:
        Path(path).write_text(text + "\n")
        progress(f"raw results written to {path}")


# -- the runtime entries part ----------------------------------------------------------------------


def runtime_rows(result: RuntimeResult) -> list[Row]:
    """Rows of the benchmark's table (beatleader's column; the baselines have no such part)."""
    rows: list[Row] = []
    for f in result.figures:
        kind = "that have run" if f.with_state else "new"
        rows += [
            (
                f"runtime: takeover, {f.definitions:,} {kind} definitions",
                f"{f.takeover_s:.2f} s, {f.takeover_reads:,} reads / {f.takeover_requests:,} req",
                "not measured",
                "n/a (static schedule)",
            ),
            (
                "  of which definitions / run state",
                f"{f.definitions_load_s:.2f} s / {f.state_load_s:.2f} s",
                "not measured",
                "n/a",
            ),
        ]
        for change in f.changes:
            requests = "?" if change.requests is None else str(change.requests)
            rows.append(
                (
                    f"  {change.what}: reads / requests / applied",
                    f"{change.reads} / {requests} / {change.seconds * 1000:,.0f} ms",
                    "not measured",
                    "n/a",
                )
            )
    return rows


def runtime_ratios(result: RuntimeResult) -> list[str]:
    lines = []
    for f in result.figures:
        kind = "have run" if f.with_state else "new"
        lines.append(
            f"runtime takeover ({kind}) / {TAKEOVER_TARGET_S:g} s target = "
            f"{f.definitions_load_s / TAKEOVER_TARGET_S:.2f} (definitions), "
            f"{f.takeover_s / TAKEOVER_TARGET_S:.2f} (whole takeover)"
        )
        update = next(c for c in f.changes if c.what == "update one")
        lines.append(
            f"runtime update ({kind}): reads per change / reads of a full reload = "
            f"{update.reads} / {f.takeover_reads:,} = {update.reads / f.takeover_reads:.5f}"
        )
    return lines


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


# -- the worker guard ------------------------------------------------------------------------------

#: The issue's bar: guarded throughput with a history within 20 % of the guard without one.
HISTORY_BAR = 0.80


def guard_rows(results: Sequence[GuardResult]) -> list[tuple[str, ...]]:
    """variant, runs, executions/s, / unguarded, / history 0, ZooKeeper requests per run."""
    unguarded = next((r.per_s for r in results if not r.guarded), None)
    history_0 = next((r.per_s for r in results if r.history_size == 0), None)
    rows: list[tuple[str, ...]] = []
    for r in results:
        count = max(1, len(r.round_rates))
        runs = f"{count} x {r.runs // count:,}"
        if r.executions != r.runs:
            runs = f"{r.executions:,} of {runs}"
        per_run = r.requests_per_run
        rows.append(
            (
                r.label,
                runs,
                _rate(r.per_s),
                _ratio_text(throughput_ratio(r.per_s, unguarded)),
                _ratio_text(throughput_ratio(r.per_s, history_0)) if r.guarded else "",
                "" if per_run is None else f"{per_run:.2f}",
            )
        )
    return rows


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _ratio_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def guard_lines(results: Sequence[GuardResult]) -> list[str]:
    """The bar (history / history 0 >= 0.80), the seconds of each window, repeated task ids."""
    lines = []
    history_0 = next((r for r in results if r.history_size == 0), None)
    with_history = next((r for r in results if r.history_size not in (None, 0)), None)
    if history_0 is not None and with_history is not None:
        value = throughput_ratio(with_history.per_s, history_0.per_s)
        verdict = (
            "n/a"
            if value is None
            else ("within" if value >= HISTORY_BAR else "NOT within") + " the 20 % bar"
        )
        lines.append(
            f"history {with_history.history_size} / history 0 = {_ratio_text(value)}: {verdict} "
            f"(>= {HISTORY_BAR:.2f})"
        )
    for r in results:
        requests = "" if r.zk_requests is None else f", {r.zk_requests:,} ZooKeeper requests"
        rates = ", ".join("n/a" if v is None else f"{v:,.0f}" for v in r.round_rates)
        lines.append(
            f"{r.label}: {r.executions:,} executions in {r.seconds:.2f} s (first to last, "
            f"summed over the rounds; per round {rates}/s: median {_rate(r.per_s)}){requests}, "
            "repeated task ids "
            f"{r.repeated_ids}"
        )
    return lines


def print_guard_table(results: Sequence[GuardResult]) -> None:
    header = ("guard variant", "runs", "executions/s", "/ unguarded", "/ history 0", "ZK req/run")
    print_table(guard_rows(results), header)
    for line in guard_lines(results):
        print("  " + line)


def guard_settings(args: argparse.Namespace) -> str:
    before = f" --guard-before {args.guard_before}" if args.guard_before else ""
    return (
        f"--guard-runs {args.guard_runs} --guard-rounds {args.guard_rounds} "
        f"--guard-warmup {args.guard_warmup} --guard-entries {args.guard_entries} "
        f"--guard-retention {args.guard_retention:g}{before}"
    )


def guard_legend(args: argparse.Namespace) -> list[str]:
    return [
        f"one celery worker --pool prefork --concurrency 2 (Redis broker, tests.app.record) "
        f"drains {args.guard_runs:,} pre-published distinct runs of {args.guard_entries} "
        "entries (real run ids and headers); executions/s from its first execution to its "
        f"last; {args.guard_rounds} round(s) of every variant, each round in the reverse "
        "order of the previous; executions/s is the median of the rounds' own rates "
        "(scripts/bench/guard.py)",
        f"guarded workers: BEATLEADER_DEDUP_RETENTION={args.guard_retention:g} s (markers "
        "pruned every 32nd run, as in full folders), BEATLEADER_HISTORY_SIZE 0 or 20; ZK req/run: "
        "mntr zk_packets_received delta from before the worker's start to its last execution, "
        "per execution (includes its two sessions' connects and pings); with a history the "
        "newest markers of each entry are not deleted, hence a few fewer requests in a run "
        "this short (in a steady state every run's marker is deleted once either way)",
    ]


def print_guard_report(args: argparse.Namespace, res: GuardResults) -> None:
    start = "/".join(f"{v:.2f}" for v in res.load_start)
    end = "/".join(f"{v:.2f}" for v in res.load_end)
    print(
        f"\n== beatleader benchmark: worker guard ({args.guard_rounds} rounds of "
        f"{args.guard_runs:,} runs a variant) =="
    )
    print("settings:", res.settings)
    print(
        f"machine:  nproc {os.cpu_count()}, Python {platform.python_version()}, celery "
        f"{version('celery')}, kazoo {version('kazoo')}, redis-py {version('redis')}; "
        f"load average {start} at start, {end} at end\n"
    )
    print_guard_table(res.guard)
    print("\nwhat is measured:")
    for line in guard_legend(args):
        print("  - " + line)
