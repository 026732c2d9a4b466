"""The command line: the flags, the order of the phases, the work folder, the exit codes.

``main`` runs every phase (``measure``, then the contenders and the jitter phase), or with
``--only-runtime`` only the runtime entries part (``measure_runtime_only``), or with
``--only-guard`` only the worker guard's phase (``measure_guard_only``), or with
``--only-contenders`` / ``--only-jitter`` only that phase, or with ``--before REF``
beatleader at REF beside this tree (``compare.py``), then prints the report; SIGINT and
SIGTERM unwind through the cleanups, so every process started is stopped, and the work folder
(beat logs) is removed unless ``--keep`` or an error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from scripts.bench.analysis import ThroughputResult
from scripts.bench.cluster import Context, Fleet, base_env, servers
from scripts.bench.common import BEATLEADER, INTERVAL_S, PERSISTENT, REDBEAT, progress
from scripts.bench.compare import measure_compare, print_compare
from scripts.bench.contenders import CrowdResult, print_contenders, run_contenders
from scripts.bench.guard import check_args, run_guard
from scripts.bench.jitter import JitterResult, measure_jitter_only, print_jitter
from scripts.bench.persistent import run_persistent
from scripts.bench.report import (
    GuardResults,
    Results,
    dump_json,
    guard_settings,
    print_guard_report,
    print_report,
    print_runtime_report,
)
from scripts.bench.throughput import run_throughput
from scripts.bench.timeline import run_timeline
from scripts.bench_runtime import RuntimeResult, run_runtime
from tests.harness import ZooKeeperServer


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Failover, lateness and throughput of beatleader vs celery-redbeat vs "
        "celery's PersistentScheduler, measured now on this machine (see the module docstring). "
        "Default total runtime: about 12 minutes, plus 3 to 4 for the jitter phase.",
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
    add("--skip-guard", action="store_true", help="do not run the worker guard phase")
    add(
        "--only-contenders",
        action="store_true",
        help="run only the many-contenders phase (scripts/bench/contenders.py, 1 to 2 minutes)",
    )
    add("--skip-contenders", action="store_true", help="do not run the many-contenders phase")
    add(
        "--contenders",
        type=int,
        default=500,
        help="contenders on one path in the many-contenders phase (also run at 3 and 50)",
    )
    add(
        "--only-jitter",
        action="store_true",
        help="run only the jitter phase (scripts/bench/jitter.py, 3 to 4 minutes)",
    )
    add("--skip-jitter", action="store_true", help="do not run the jitter phase")
    add(
        "--jitter-entries",
        type=int,
        default=500,
        help="entries of each set of the jitter phase (one set without jitter, one with)",
    )
    add(
        "--jitter-window",
        type=float,
        default=60,
        help="the jitter of the jittered set, its window (seconds)",
    )
    add(
        "--only-guard",
        action="store_true",
        help="run only the worker guard phase (1.5 to 2 minutes) and print its figures",
    )
    add(
        "--guard-runs",
        type=int,
        default=2000,
        help="pre-published runs one worker executes in each variant of the guard phase",
    )
    add(
        "--guard-rounds",
        type=int,
        default=3,
        help="rounds of every guard variant (alternating order); the median round counts",
    )
    add(
        "--guard-warmup",
        type=int,
        default=400,
        help="runs of an uncounted guarded worker before the first round (0: none)",
    )
    add("--guard-entries", type=int, default=20, help="entries the guard phase's runs spread over")
    add(
        "--guard-retention",
        type=float,
        default=1,
        help="BEATLEADER_DEDUP_RETENTION of the guarded workers (seconds; short, so that "
        "markers are pruned as in a deployment's full folders)",
    )
    add(
        "--guard-before",
        metavar="REF",
        help="also measure the guard of beatleader at this git ref (e.g. de19f19)",
    )
    add(
        "--before",
        metavar="REF",
        help="compare with beatleader at this git ref instead: its timeline and throughput "
        "beside this tree's and PersistentScheduler's, in one run (scripts/bench/compare.py), "
        "with issue 19's targets; no redbeat",
    )
    add("--json", metavar="PATH", help="also dump raw results as JSON to PATH ('-': stdout)")
    add("--keep", action="store_true", help="keep the work directory (beat logs) afterwards")
    args = parser.parse_args(argv)
    check_args(parser, args)
    if args.only_guard and (args.only_runtime or args.before):
        parser.error("--only-guard goes with neither --only-runtime nor --before")
    if args.only_contenders and (args.only_runtime or args.only_guard or args.before):
        parser.error("--only-contenders goes with none of --only-runtime, --only-guard, --before")
    only = [args.only_runtime, args.only_guard, args.only_contenders, bool(args.before)]
    if args.only_jitter and any(only):
        parser.error(
            "--only-jitter goes with none of --only-runtime, --only-guard, --only-contenders, "
            "--before"
        )
    if not 1 <= args.jitter_entries <= 999:
        parser.error("--jitter-entries must be in [1, 999]")
    if not 1 <= args.jitter_window <= 600:
        parser.error("--jitter-window must be in [1, 600] seconds")
    if args.contenders < 3:
        parser.error("--contenders must be at least 3")
    if args.instances < 2:
        parser.error("--instances must be at least 2 (a failover needs a successor)")
    if args.seconds < 9:
        parser.error("--seconds must be at least 9")
    if not 0 <= args.signal_phase < INTERVAL_S:
        parser.error(f"--signal-phase must be in [0, {INTERVAL_S:g})")
    return args


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
    guard = None if args.skip_guard else run_guard(args, ctx.workdir, ctx.zk, ctx.redis_url)
    return Results(
        beatleader, redbeat, persistent, throughput, load_start, os.getloadavg(), runtime, guard
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


def measure_guard_only(args: argparse.Namespace, workdir: Path) -> GuardResults:
    """The worker guard phase alone, on a ZooKeeper and a Redis of its own (no beat process)."""
    load_start = os.getloadavg()
    with servers(workdir) as (zk, rd):
        guard = run_guard(args, workdir, zk, rd.url)
    progress("done")
    return GuardResults(guard, guard_settings(args), load_start, os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through the cleanups
    workdir = Path(tempfile.mkdtemp(prefix="beatleader-bench-"))
    keep = args.keep
    load_start = os.getloadavg()
    try:
        results: Results | RuntimeResult | GuardResults
        crowd: list[CrowdResult] = []
        spread: JitterResult | None = None
        counts = sorted({3, 50, args.contenders})
        if args.before:
            sides = measure_compare(args, workdir)
            print_compare(args, *sides)
            return 0
        if args.only_contenders:
            print_contenders(run_contenders(workdir, counts))
            return 0
        if args.only_jitter:
            print_jitter(measure_jitter_only(args, workdir))
            return 0
        if args.only_runtime:
            results = measure_runtime_only(args, workdir)
        elif args.only_guard:
            results = measure_guard_only(args, workdir)
        else:
            results = measure(args, workdir)
            if not args.skip_contenders:
                crowd = run_contenders(workdir, counts)
            if not args.skip_jitter:
                spread = measure_jitter_only(args, workdir)
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
    elif isinstance(results, GuardResults):
        print_guard_report(args, results)
    else:
        print_report(args, results)
        if crowd:
            print_contenders(crowd)
        if spread is not None:
            print_jitter(spread)
    if args.json:
        dump_json(args.json, args, results)
    return 0
