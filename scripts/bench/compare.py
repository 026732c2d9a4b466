"""``--before REF``: beatleader at a git ref and the working tree, side by side in one run.

For a change that must not change behaviour or speed (a restructuring): the tree of ``REF`` is
extracted (``git archive``) into the work folder, and the same phases run for both, alternating,
on the same ZooKeeper and Redis: the failover timeline (SIGKILL, SIGTERM, steady lateness), then
the throughput phase for each ``--entries`` count. Each beat of the "before" side runs from the
extracted tree (its folder is the beats' working directory and first on ``PYTHONPATH``), so it
imports that tree's ``beatleader``; ``bench_app`` is this tree's. redbeat, PersistentScheduler and
the runtime entries part are not run in this mode.

The table prints each figure for both and after / before; figures of one run on one machine,
with the noise of a two-core machine: differences within about 10 % (lateness: a few ms) are noise.
"""

from __future__ import annotations

import argparse
import subprocess
import tarfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from scripts.bench.analysis import PersistentResult, ThroughputResult, TimelineResult, percentile
from scripts.bench.cluster import Context, Fleet, base_env, servers
from scripts.bench.common import BEATLEADER, PERSISTENT, REPO_ROOT, progress
from scripts.bench.persistent import run_persistent
from scripts.bench.report import ms, print_table
from scripts.bench.targets import cpu_target, lateness_targets, throughput_target
from scripts.bench.throughput import run_throughput
from scripts.bench.timeline import run_timeline


@dataclass
class Side:
    label: str
    timeline: TimelineResult
    throughput: list[ThroughputResult]


@dataclass
class Baseline:
    """celery's PersistentScheduler in the same run: steady lateness and throughput."""

    persistent: PersistentResult
    throughput: list[ThroughputResult]


def extract(ref: str, into: Path) -> Path:
    """The tree of ``ref`` in ``into``; SystemExit (one line) when git does not know it."""
    found = subprocess.run(
        ["git", "archive", "--format=tar", ref],
        cwd=REPO_ROOT,
        capture_output=True,
        check=False,
    )
    if found.returncode != 0:
        message = found.stderr.decode(errors="replace").strip().splitlines()
        raise SystemExit(f"--before {ref!r}: git archive failed ({message[-1] if message else ''})")
    into.mkdir(parents=True)
    with tarfile.open(fileobj=BytesIO(found.stdout)) as archive:
        archive.extractall(into, filter="data")
    return into


def measure_compare(args: argparse.Namespace, workdir: Path) -> tuple[Side, Side, Baseline]:
    before_root = extract(args.before, workdir / "before-tree")
    with servers(workdir) as (zk, rd):
        fleets = {
            "before": Fleet(workdir, base_env(zk.hosts, rd.url, args, before_root), before_root),
            "after": Fleet(workdir, base_env(zk.hosts, rd.url, args)),
        }
        try:
            ctx = {
                label: Context(args, workdir, fleet, rd.url, zk) for label, fleet in fleets.items()
            }
            timelines = {
                label: run_timeline(ctx[label], label, BEATLEADER) for label in ("before", "after")
            }
            persistent = run_persistent(ctx["after"])
            throughput: dict[str, list[ThroughputResult]] = {
                "before": [],
                "after": [],
                "persistent": [],
            }
            if not args.skip_throughput:
                for entries in args.entries:
                    for label in ("before", "after"):
                        found = run_throughput(
                            ctx[label], label, BEATLEADER, args.instances, entries
                        )
                        throughput[label].append(found)
                    found = run_throughput(ctx["after"], "persistent", PERSISTENT, 1, entries)
                    throughput["persistent"].append(found)
        finally:
            for fleet in fleets.values():
                fleet.close()
    progress("done")
    return (
        Side(f"before ({args.before})", timelines["before"], throughput["before"]),
        Side("after (this tree)", timelines["after"], throughput["after"]),
        Baseline(persistent, throughput["persistent"]),
    )


def _ratio(after: float | None, before: float | None) -> str:
    if after is None or before is None or before <= 0:
        return "n/a"
    return f"{after / before:.2f}"


def _cpu(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def print_compare(args: argparse.Namespace, before: Side, after: Side, base: Baseline) -> None:
    rows: list[tuple[str, ...]] = []

    def add(
        metric: str, b: float | None, a: float | None, p: float | None = None, text: str = "ms"
    ) -> None:
        show = ms if text == "ms" else (lambda v: "n/a" if v is None else f"{v:,.0f} {text}")
        shown_p = "-" if p is None else show(p)
        ratios = ("-", "-") if p is None else (_ratio(b, p), _ratio(a, p))
        rows.append((metric, show(b), show(a), shown_p, _ratio(a, b), *ratios))

    bt, at, ps = before.timeline, after.timeline, base.persistent
    add("crash: SIGKILL leader -> next send", bt.crash.latency_ms, at.crash.latency_ms)
    add("graceful: SIGTERM leader -> next send", bt.handoff.latency_ms, at.handoff.latency_ms)
    for q in (50, 99):
        add(
            f"steady lateness p{q}",
            percentile(bt.lateness, q),
            percentile(at.lateness, q),
            percentile(ps.lateness, q),
        )
    add("duplicate sends", bt.duplicates, at.duplicates, text="")
    targets = lateness_targets(
        percentile(at.lateness, 50), percentile(at.lateness, 99), percentile(ps.lateness, 99)
    )
    for b, a, p in zip(before.throughput, after.throughput, base.throughput, strict=True):
        add(
            f"throughput, {b.entries} entries every 1 s",
            b.sends_per_s,
            a.sends_per_s,
            p.sends_per_s,
            "sends/s",
        )
        for q in (50, 99):
            add(
                f"  lateness p{q}",
                percentile(b.lateness, q),
                percentile(a.lateness, q),
                percentile(p.lateness, q),
            )
        bc, ac, pc = b.cpu_per_1000_sends, a.cpu_per_1000_sends, p.cpu_per_1000_sends
        rows.append(
            (
                "  CPU-s per 1,000 sends",
                _cpu(bc),
                _cpu(ac),
                _cpu(pc),
                _ratio(ac, bc),
                _ratio(bc, pc),
                _ratio(ac, pc),
            )
        )
        found = throughput_target(a.entries, a.sends_per_s, p.sends_per_s)
        if found is not None:
            targets.append(found)
        targets.append(cpu_target(a.entries, ac, bc))
    print()
    print(
        f"beatleader before ({args.before}) and after (this tree), one run, {args.instances} "
        f"instances, session timeout {args.session_timeout:g} s, timeline {args.seconds:g} s"
    )
    header = (
        "metric",
        before.label,
        after.label,
        "PersistentScheduler",
        "after / before",
        "before / Persistent",
        "after / Persistent",
    )
    print_table(rows, header)
    print()
    print("issue 19's targets, from the figures above (scripts/bench/targets.py)")
    print_table([(t.name, t.found, t.verdict) for t in targets], ("target", "found", "verdict"))
