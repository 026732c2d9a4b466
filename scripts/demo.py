"""beatleader's quick-start demo: 3 beat instances, 1 worker, a local ZooKeeper, one crash.

Run ``scripts/demo.sh`` (it installs what is missing first) or ``python3 scripts/demo.py``.

It starts a throwaway ZooKeeper (:mod:`beatleader.testing.localzk`), a broker-less kombu filesystem
transport in a temp folder, a worker and three ``celery beat -S beatleader.Scheduler`` instances
of ``scripts/demo_app.py`` (entries ``every-1s`` and ``every-5s``). It prints which instance leads
and every task as the worker runs it, with the instance that sent it; half-way it SIGKILLs the
leader; at the end it prints a summary: runs per entry, duplicates, the largest gap between runs
of ``every-1s`` and the failover time.

Guarantees: every process it starts is stopped when it returns, on Ctrl-C, SIGTERM or an error;
the exit code is 0 only when another instance took over and no task id ran twice.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo_app import FAST_ENTRY, SLOW_ENTRY
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError
from topology import NativeTopology, close_all, stop_uninterrupted

from beatleader.ops.status import Contender, read_leader
from beatleader.testing.localzk import missing_requirements

POLL_INTERVAL = 0.2
#: Seconds the worker gets, after the beats stopped, to run what was already sent.
DRAIN_TIMEOUT = 5.0


@dataclass
class Run:
    """What the demo observed; the summary is computed from it."""

    started: float = field(default_factory=time.monotonic)
    wall_started: float = field(default_factory=time.time)
    executions: list[dict[str, Any]] = field(default_factory=list)
    leaders: list[tuple[float, str | None]] = field(default_factory=list)
    killed: str | None = None
    killed_at: float | None = None
    takeover_at: float | None = None
    takeover_by: str | None = None
    first_task_after_kill: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def relative(self, wall_ts: float) -> float:
        return wall_ts - self.wall_started


class ExecutionTail:
    """Reads the JSON lines the worker appends, complete lines only, each once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="beatleader demo: 3 beats, 1 worker, 1 crash")
    parser.add_argument("--seconds", type=float, default=40, help="how long to run (default 40)")
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=3,
        help="ZooKeeper session timeout in seconds: the crash-failover time (default 3)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder with the logs")
    return parser.parse_args(argv)


def say(run: Run, text: str) -> None:
    print(f"[{run.elapsed():5.1f}s] {text}", flush=True)


def sender_name(topo: NativeTopology, origin: str) -> str:
    """``beat-2 (pid 123)`` for celery's origin ``gen123@host``."""
    pid_text = origin.split("@", 1)[0].removeprefix("gen")
    beat = topo.beat_by_pid(int(pid_text)) if pid_text.isdigit() else None
    return f"{beat.name} (pid {beat.pid})" if beat else origin


def leader_name(leader: Contender | None) -> str | None:
    if leader is None:
        return None
    return f"{leader.identity} (pid {leader.info.pid if leader.info else '?'})"


def poll_leader(client: KazooClient, topo: NativeTopology, run: Run) -> Contender | None:
    """Read the leader; print and record it when it changed."""
    try:
        leader = read_leader(client, topo.path)
    except (KazooException, KazooTimeoutError):
        return None
    name = leader_name(leader)
    previous = run.leaders[-1][1] if run.leaders else None
    if not run.leaders or name != previous:
        run.leaders.append((run.elapsed(), name))
        say(run, f"leader: {name}" if name else _no_leader(run))
        if run.killed_at is not None and name and run.takeover_at is None:
            run.takeover_at = run.elapsed()
            run.takeover_by = name
            say(run, f"{name} took over {run.takeover_at - run.killed_at:.1f}s after the kill")
    return leader


def _no_leader(run: Run) -> str:
    if run.killed_at is None:
        return "no leader yet (the instances are starting)"
    return "no leader (ZooKeeper expires the dead leader's session)"


def show_executions(tail: ExecutionTail, topo: NativeTopology, run: Run) -> None:
    for record in tail.new():
        run.executions.append(record)
        at = run.relative(record["ts"])
        sender = sender_name(topo, record["origin"])
        print(
            f"[{at:5.1f}s]   worker ran {record['entry']:<9} sent by {sender:<18} "
            f"task {record['id'][:8]}",
            flush=True,
        )
        after_kill = run.killed_at is not None and at > run.killed_at
        if after_kill and run.first_task_after_kill is None and sender != run.killed:
            run.first_task_after_kill = at


def kill_leader(topo: NativeTopology, leader: Contender, run: Run) -> None:
    beat = topo.beat_by_pid(leader.info.pid) if leader.info else None
    if beat is None:
        return
    run.killed = f"{beat.name} (pid {beat.pid})"
    run.killed_at = run.elapsed()
    beat.kill()
    timeout = f"{topo.session_timeout:g}s"
    say(run, f">>> SIGKILL {run.killed}, the leader; its session expires in ~{timeout}")


def watch(topo: NativeTopology, seconds: float, run: Run, tail: ExecutionTail) -> None:
    """Print leader changes and executions for ``seconds``; kill the leader half-way."""
    client = KazooClient(hosts=topo.zk_hosts, timeout=5)
    client.start(timeout=15)
    try:
        while run.elapsed() < seconds:
            leader = poll_leader(client, topo, run)
            show_executions(tail, topo, run)
            if run.killed_at is None and leader is not None and run.elapsed() >= seconds / 2:
                kill_leader(topo, leader, run)
            time.sleep(POLL_INTERVAL)
    finally:
        client.stop()
        client.close()


def drain(topo: NativeTopology, run: Run, tail: ExecutionTail) -> None:
    """Stop the beats, then let the worker run (and show) what was already sent."""
    show_executions(tail, topo, run)
    say(run, "stopping the beats; the worker runs what was already sent")
    close_all(topo.beats)
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while any(topo.broker_dir.glob("*.msg")) and time.monotonic() < deadline:
        show_executions(tail, topo, run)
        time.sleep(POLL_INTERVAL)
    time.sleep(2 * POLL_INTERVAL)  # the last task may still be running
    show_executions(tail, topo, run)


def largest_gap(timestamps: list[float]) -> float | None:
    ordered = sorted(timestamps)
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    return max(gaps) if gaps else None


def summary(topo: NativeTopology, run: Run) -> tuple[str, bool]:
    """The summary text and whether the demo showed what it promises."""
    runs = Counter(e["entry"] for e in run.executions)
    ids = Counter(e["id"] for e in run.executions)
    duplicates = sorted(task_id for task_id, n in ids.items() if n > 1)
    fast = [e["ts"] for e in run.executions if e["entry"] == FAST_ENTRY]
    gap = largest_gap(fast)
    failover = (
        run.takeover_at - run.killed_at
        if run.takeover_at is not None and run.killed_at is not None
        else None
    )
    lines = [
        "",
        "summary",
        f"  runs: {FAST_ENTRY} {runs[FAST_ENTRY]}, {SLOW_ENTRY} {runs[SLOW_ENTRY]}",
        f"  duplicates (a task id run twice): {len(duplicates)}",
        f"  largest gap between two runs of {FAST_ENTRY}: "
        + (f"{gap:.1f}s" if gap is not None else "n/a"),
        f"  killed: {run.killed or 'nobody (no leader half-way?)'}",
        f"  failover: {run.takeover_by or 'nobody'} led "
        + (f"{failover:.1f}s after the kill" if failover is not None else "-")
        + f" (session timeout {topo.session_timeout:g}s)",
    ]
    if run.first_task_after_kill is not None and run.killed_at is not None:
        delay = run.first_task_after_kill - run.killed_at
        lines.append(f"  first task from the new leader: {delay:.1f}s after the kill")
    ok = not duplicates and failover is not None
    return "\n".join(lines), ok


def run_demo(args: argparse.Namespace, base_dir: Path) -> bool:
    topo = NativeTopology(base_dir, zk_servers=1, beats=3, session_timeout=args.session_timeout)
    run = Run()
    try:
        print(f"starting ZooKeeper, 1 worker and 3 beat instances in {base_dir}", flush=True)
        topo.start()
        run = Run()
        say(run, "started " + ", ".join(f"{b.name} (pid {b.pid})" for b in topo.beats))
        say(run, f"watch it yourself: {topo.status_command()}")
        tail = ExecutionTail(topo.execution_log)
        watch(topo, args.seconds, run, tail)
        drain(topo, run, tail)
    finally:
        stop_uninterrupted(topo)
    text, ok = summary(topo, run)
    print(text, flush=True)
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_requirements()
    if missing:
        print("demo: missing " + "; ".join(missing) + " (run scripts/demo.sh)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    base_dir = Path(tempfile.mkdtemp(prefix="beatleader-demo-"))
    keep = args.keep
    try:
        ok = run_demo(args, base_dir)
    except KeyboardInterrupt:
        print("\ninterrupted; everything was stopped", flush=True)
        return 130
    except BaseException:
        keep = True
        print(f"demo failed; logs kept in {base_dir}", file=sys.stderr)
        raise
    finally:
        if keep:
            print(f"logs: {base_dir}/procs, {base_dir}/zookeeper", flush=True)
        else:
            shutil.rmtree(base_dir, ignore_errors=True)
    return 0 if ok else 1


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
