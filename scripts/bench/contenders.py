"""Many contenders on one path (``--only-contenders``; ``--contenders``, default 500).

``EmbeddedBeat`` makes every web worker process a contender: 10 machines x 50 workers is 500 on
one path. This phase runs that many election contenders, each exactly what a beat runs for the
election (``beatleader.testing.crowd``: a ``LeaderElection`` with its ``PeerWatch``, a session of
its own), on a ZooKeeper of its own (``maxClientCnxns`` lifted: they all come from loopback).
The leader runs in a child process; the others in this one. For each count (3, 50 and the
``--contenders`` count), on a fresh path:

* **join**: one more contender joins at the back; the requests every session made for it (the
  sum of ``cons`` ``lcxid`` deltas over all sessions, the joiner's own included), counted once
  no session has moved for a second;
* **leave**: a follower in the middle stops gracefully; the requests that cost everyone;
* **status**: wall time of ``python -m beatleader.cli status`` (a real process: interpreter start,
  imports, connect, read) and of ``read_status`` in this process;
* **takeover**: the leader's process gets SIGKILL; seconds until its successor leads (the
  session timeout, ``SESSION_S``, plus what the election adds).

Expected: join and leave are O(1) (the same at 3, 50 and 500), the takeover the same, status
well under 1 s.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from beatleader.ops.status import read_status
from beatleader.testing.crowd import CHILD, Contender, contender, session_requests
from beatleader.testing.localzk import ZooKeeperServer
from beatleader.zk.layout import election_path
from scripts.bench.common import REPO_ROOT, progress
from scripts.bench.report import print_table
from tests.harness import connected_client, wait_for

#: Session timeout of every contender (seconds).
SESSION_S = 4.0
#: Seconds in which no session may move for the request counts to be read.
QUIET_S = 1.0


@dataclass
class CrowdResult:
    contenders: int
    join_requests: int
    leave_requests: int
    status_cli_s: float
    status_read_s: float
    takeover_s: float


def run_contenders(workdir: Path, counts: list[int]) -> list[CrowdResult]:
    zk = ZooKeeperServer(workdir / "zookeeper-crowd", extra_config={"maxClientCnxns": 0})
    for noisy in ("kazoo", "beatleader"):  # 500 sessions closing at the end: reconnect noise
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    progress("starting ZooKeeper (contenders)")
    zk.start(timeout=60)
    try:
        return [_one(zk, count, f"/bench/crowd-{count}") for count in counts]
    finally:
        zk.stop()


def _settled(zk: ZooKeeperServer) -> dict[int, int]:
    """Every session's request count, once none moved for ``QUIET_S``."""

    def still() -> dict[int, int] | None:
        before = session_requests(zk.connections())
        time.sleep(QUIET_S)  # an observation window: the counts must not move in it
        after = session_requests(zk.connections())
        return after if before == after else None

    found: dict[int, int] = wait_for(still, 120, interval=0.0, message="the sessions settle")
    return found


def _cost(before: dict[int, int], after: dict[int, int]) -> int:
    return sum(count - before.get(session, 0) for session, count in after.items())


def _one(zk: ZooKeeperServer, count: int, root: str) -> CrowdResult:
    path = election_path(root)
    progress(f"contenders x{count}: joining")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, zk.hosts, path, "c0000", str(SESSION_S)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    here: list[Contender] = []
    try:
        assert child.stdout is not None
        child.stdout.readline()  # its session id: it contends (its node comes just after)
        with connected_client(zk.hosts) as client:
            wait_for(lambda: client.exists(path) and client.get_children(path), 30)
        for number in range(1, count):
            here.append(contender(zk.hosts, path, f"c{number:04d}", SESSION_S))
        wait_for(lambda: all(c.election.node for c in here), 120, message="all contend")
        before = _settled(zk)
        here.append(contender(zk.hosts, path, f"c{count:04d}", SESSION_S))
        wait_for(lambda: here[-1].election.node, 30, message="the joiner contends")
        after = _settled(zk)
        join = _cost(before, after)
        middle = here[len(here) // 2]
        middle.stop()
        here.remove(middle)
        before, after = after, _settled(zk)
        leave = _cost(before, after)
        progress(f"  join {join} requests, leave {leave}; status")
        started = time.monotonic()
        command = [sys.executable, "-m", "beatleader.cli", "status"]
        subprocess.run(
            [*command, "--zk-hosts", zk.hosts, "--path", root],
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        status_cli = time.monotonic() - started
        started = time.monotonic()
        status = read_status(here[0].client, root)
        status_read = time.monotonic() - started
        assert len(status.contenders) == count, len(status.contenders)
        assert not any(c.election.is_leader for c in here), "the child process leads"
        child.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(  # the next in line: the lowest sequence, not the first started
            lambda: any(c.election.is_leader for c in here),
            60,
            interval=0.01,
            message="a successor",
        )
        takeover = time.monotonic() - killed
        progress(f"  status {status_cli:.2f} s (CLI), takeover {takeover:.2f} s")
        return CrowdResult(count, join, leave, status_cli, status_read, takeover)
    finally:
        for c in here:
            c.stop()
        if child.poll() is None:
            child.kill()
        child.wait(10)


def print_contenders(results: list[CrowdResult]) -> None:
    print(f"\n== contenders on one path (session timeout {SESSION_S:g} s) ==")
    rows = [
        (
            f"{r.contenders:,}",
            str(r.join_requests),
            str(r.leave_requests),
            f"{r.status_cli_s * 1000:,.0f} ms",
            f"{r.status_read_s * 1000:,.1f} ms",
            f"{r.takeover_s:.2f} s",
        )
        for r in results
    ]
    header = (
        "contenders",
        "join: requests (all sessions)",
        "leave: requests",
        "beatleader status (process)",
        "read_status",
        "takeover after SIGKILL",
    )
    print_table(rows, header)
