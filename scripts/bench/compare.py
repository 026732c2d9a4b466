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

from scripts.bench.analysis import ThroughputResult, TimelineResult, percentile
from scripts.bench.cluster import Context, Fleet, base_env, servers
from scripts.bench.common import BEATLEADER, REPO_ROOT, progress
from scripts.bench.report import ms, print_table
from scripts.bench.throughput import run_throughput
from scripts.bench.timeline import run_timeline


@dataclass
class Side:
    label: str
    timeline: TimelineResult
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


def measure_compare(args: argparse.Namespace, workdir: Path) -> tuple[Side, Side]:
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
            throughput: dict[str, list[ThroughputResult]] = {"before": [], "after": []}
            if not args.skip_throughput:
                for entries in args.entries:
                    for label in ("before", "after"):
                        found = run_throughput(
                            ctx[label], label, BEATLEADER, args.instances, entries
                        )
                        throughput[label].append(found)
        finally:
            for fleet in fleets.values():
                fleet.close()
    progress("done")
    return (
        Side(f"before ({args.before})", timelines["before"], throughput["before"]),
        Side("after (this tree)", timelines["after"], throughput["after"]),
    )


def _ratio(after: float | None, before: float | None) -> str:
    if after is None or before is None or before <= 0:
        return "n/a"
    return f"{after / before:.2f}"


def _cpu(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def print_compare(args: argparse.Namespace, before: Side, after: Side) -> None:
    rows: list[tuple[str, str, str, str]] = []

    def add(metric: str, b: float | None, a: float | None, text: str = "ms") -> None:
        show = ms if text == "ms" else (lambda v: "n/a" if v is None else f"{v:,.0f} {text}")
        rows.append((metric, show(b), show(a), _ratio(a, b)))

    bt, at = before.timeline, after.timeline
    add("crash: SIGKILL leader -> next send", bt.crash.latency_ms, at.crash.latency_ms)
    add("graceful: SIGTERM leader -> next send", bt.handoff.latency_ms, at.handoff.latency_ms)
    for q in (50, 99):
        add(f"steady lateness p{q}", percentile(bt.lateness, q), percentile(at.lateness, q))
    add("duplicate sends", bt.duplicates, at.duplicates, "")
    for b, a in zip(before.throughput, after.throughput, strict=True):
        add(f"throughput, {b.entries} entries every 1 s", b.sends_per_s, a.sends_per_s, "sends/s")
        for q in (50, 99):
            add(f"  lateness p{q}", percentile(b.lateness, q), percentile(a.lateness, q))
        rows.append(
            (
                "  CPU-s per 1,000 sends",
                _cpu(b.cpu_per_1000_sends),
                _cpu(a.cpu_per_1000_sends),
                _ratio(a.cpu_per_1000_sends, b.cpu_per_1000_sends),
            )
        )
    print()
    print(
        f"beatleader before ({args.before}) and after (this tree), one run, {args.instances} "
        f"instances, session timeout {args.session_timeout:g} s, timeline {args.seconds:g} s"
    )
    print_table(rows, ("metric", before.label, after.label, "after / before"))
