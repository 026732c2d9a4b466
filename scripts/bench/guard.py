"""The worker guard's cost: one worker draining pre-published runs, unguarded and guarded.

For each variant, on the benchmark's Redis (broker) and ZooKeeper: the queue is emptied, ``runs``
distinct runs are published as the beat publishes them (``--guard-entries`` entries, ordinals 1
to runs / entries, interleaved: ordinal 1 of every entry, then 2, ...; each with its
``layout.run_task_id`` and ``layout.run_headers``, under a root of the variant's own), then ONE
``celery worker --pool prefork --concurrency 2`` of ``tests.app`` starts and executes them
(``tests.app.record``: one O_APPEND line with ``time.time()`` per execution, the trivial task).
Executions/s counts from the first execution to the last (``analysis.execution_rate``), so the
worker's start and its first ZooKeeper connection are outside the window. Before the first
round, one guarded worker drains ``--guard-warmup`` (400) runs that are not counted (ZooKeeper's
JVM warms up there rather than in the first guarded variant).

Variants, ``--guard-rounds`` (3) rounds of them, each round in the reverse order of the one
before (the median round's executions/s is the variant's: ``analysis.combine_rounds``): no
guard; the guard with ``BEATLEADER_HISTORY_SIZE=0``; the guard with the default history (20);
with ``--guard-before REF`` also the guard of beatleader at REF (its tree extracted as
``compare.py`` does, the worker's working directory and first on ``PYTHONPATH``, so it imports
REF's ``beatleader`` and ``tests.app``). Every guarded worker runs with
``BEATLEADER_DEDUP_RETENTION`` = ``--guard-retention`` (1 s): markers older than that are pruned
every 32nd run, as in a deployment whose folders are full (with the shipped 3 h nothing would be
old enough to prune in a run of seconds), so pruning and the history it keeps are part of the
cost.

ZooKeeper requests per run: the server's ``mntr`` ``zk_packets_received`` (client packets;
four-letter words are not counted) just before the worker starts and after its last execution,
divided by the executions; nothing else talks to this ZooKeeper meanwhile. It includes the two
sessions' connects and pings (a few over a phase).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from beatleader.testing.localproc import LoggedProcess
from beatleader.zk import layout
from scripts.bench.analysis import GuardResult, combine_rounds, guard_result
from scripts.bench.common import REPO_ROOT, STARTUP_TIMEOUT, progress
from scripts.bench.compare import extract
from tests.app import RECORD_TASK, make_app
from tests.harness import ZooKeeperServer, read_executions

#: A variant whose worker executes nothing new for this long has stalled (seconds).
STALL_S = 30.0
CONCURRENCY = 2


@dataclass(frozen=True)
class Variant:
    label: str
    guarded: bool
    history_size: int | None = None  # None: the setting left unset (the ref's own behaviour)
    root: Path = REPO_ROOT


def variants(args: argparse.Namespace, workdir: Path) -> list[Variant]:
    found = [
        Variant("unguarded", guarded=False),
        Variant("guarded, history 0", guarded=True, history_size=0),
        Variant("guarded, history 20", guarded=True, history_size=20),
    ]
    if args.guard_before:
        before_root = extract(args.guard_before, workdir / "guard-before-tree")
        found.append(Variant(f"guarded at {args.guard_before}", guarded=True, root=before_root))
    return found


def run_guard(
    args: argparse.Namespace, workdir: Path, zk: ZooKeeperServer, redis_url: str
) -> list[GuardResult]:
    """``--guard-rounds`` rounds of every variant, each round in the reverse order of the
    previous one (a drift of the machine weighs on every variant alike); per variant, the
    median round."""
    found = variants(args, workdir)
    rounds: dict[str, list[GuardResult]] = {v.label: [] for v in found}
    number = 0
    if args.guard_warmup:
        # ZooKeeper's JVM and the page cache warm up on a guarded pass that is not counted:
        # otherwise the first guarded variant of the first round pays for it.
        number += 1
        progress(f"guard warm-up: {args.guard_warmup} guarded runs, not counted")
        warmup = Variant("warm-up", guarded=True)
        run_variant(args, workdir, zk, redis_url, number, warmup, args.guard_warmup)
    for round_index in range(args.guard_rounds):
        order = found if round_index % 2 == 0 else found[::-1]
        for variant in order:
            number += 1
            progress(f"guard round {round_index + 1}/{args.guard_rounds}: {variant.label}")
            rounds[variant.label].append(run_variant(args, workdir, zk, redis_url, number, variant))
    return [combine_rounds(rounds[v.label]) for v in found]


def run_variant(
    args: argparse.Namespace,
    workdir: Path,
    zk: ZooKeeperServer,
    redis_url: str,
    number: int,
    variant: Variant,
    runs: int | None = None,
) -> GuardResult:
    """One worker draining ``runs`` (default ``--guard-runs``) pre-published runs."""
    runs, entries = runs or args.guard_runs, args.guard_entries
    root = f"/bench/guard-{number}"
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    progress(f"  publishing {runs} runs of {entries} entries")
    publish_runs(redis_url, root, entries, runs // entries)
    log = workdir / f"guard-{number}-executions.jsonl"
    packets_before = int(zk.mntr()["zk_packets_received"])
    env = worker_env(variant, zk.hosts, redis_url, root, log, args.guard_retention)
    worker = start_worker(workdir, number, env)
    try:
        executions = wait_drained(worker, log, runs)
        packets_after = int(zk.mntr()["zk_packets_received"])
    finally:
        worker.stop(timeout=20)
        client.flushall()
    result = guard_result(
        variant.label,
        variant.guarded,
        variant.history_size,
        runs,
        executions,
        (packets_before, packets_after) if variant.guarded else None,
    )
    per_run = result.requests_per_run
    progress(
        f"  {result.executions} executions in {result.seconds:.2f} s: "
        f"{result.per_s or 0:,.0f}/s"
        + ("" if per_run is None else f", {per_run:.2f} ZooKeeper requests per run")
    )
    return result


def publish_runs(redis_url: str, root: str, entries: int, ordinals: int) -> None:
    """Runs 1..``ordinals`` of ``entries`` entries, as the beat publishes them, interleaved."""
    app = make_app({"TEST_REDIS_URL": redis_url}, set_as_current=False)
    try:
        names = [f"g{i:02d}" for i in range(entries)]
        with app.producer_or_acquire() as producer:
            for ordinal in range(1, ordinals + 1):
                for name in names:
                    app.send_task(
                        RECORD_TASK,
                        args=[name],
                        task_id=layout.run_task_id(root, name, ordinal),
                        headers=layout.run_headers(root, name, ordinal),
                        producer=producer,
                    )
    finally:
        app.close()


def worker_env(
    variant: Variant, zk_hosts: str, redis_url: str, root: str, log: Path, retention: float
) -> dict[str, str]:
    """The worker's environment: the servers, its root, the guard's settings, the log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "BEATLEADER_"))}
    python_path = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
    env.update(
        PYTHONPATH=os.pathsep.join([str(variant.root), *python_path]),
        TEST_REDIS_URL=redis_url,
        TEST_EXECUTION_LOG=str(log),
        BEATLEADER_ZK_HOSTS=zk_hosts,
        BEATLEADER_PATH=root,
    )
    if variant.guarded:
        env["TEST_DEDUP"] = "1"
        env["BEATLEADER_DEDUP_RETENTION"] = f"{retention:g}"
    if variant.history_size is not None:
        env["BEATLEADER_HISTORY_SIZE"] = str(variant.history_size)
    return env


def start_worker(workdir: Path, number: int, env: dict[str, str]) -> LoggedProcess:
    root = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    args = [
        *(sys.executable, "-m", "celery", "-A", "tests.app", "worker"),
        *("--pool=prefork", f"--concurrency={CONCURRENCY}", "--loglevel=WARNING"),
        *(f"--hostname=guard-{number}@%h", "--without-gossip", "--without-mingle"),
        "--without-heartbeat",
    ]
    name = f"guard-worker-{number}"
    return LoggedProcess(args, workdir / f"{name}.log", cwd=root, env=env, name=name)


def wait_drained(worker: LoggedProcess, log: Path, runs: int) -> list[tuple[float, str]]:
    """(timestamp, task id) of every execution, once ``runs`` executed (or it stalled)."""
    seen, last_change = 0, time.monotonic()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        executions = [(float(e["ts"]), str(e["id"])) for e in read_executions(log)]
        if len(executions) >= runs:
            return executions
        if not worker.alive:
            raise RuntimeError(f"{worker.name} exited; log tail:\n{worker.log_tail(40)}")
        now = time.monotonic()
        if len(executions) != seen:
            seen, last_change = len(executions), now
        if (seen and now - last_change > STALL_S) or (not seen and now > deadline):
            progress(f"  stalled at {seen} of {runs} executions; log tail:\n{worker.log_tail(20)}")
            return executions
        time.sleep(0.1)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.guard_entries < 1 or args.guard_runs < 2 * args.guard_entries:
        parser.error("--guard-runs must be at least twice --guard-entries (>= 1)")
    if args.guard_runs % args.guard_entries:
        parser.error("--guard-runs must be a multiple of --guard-entries")
    if args.guard_rounds < 1:
        parser.error("--guard-rounds must be at least 1")
    if args.guard_warmup % args.guard_entries or args.guard_warmup < 0:
        parser.error("--guard-warmup must be a multiple of --guard-entries (0: none)")
