"""Hostile writes to the election and the operator views (issue 8, points 5 and 6).

A foreign ZooKeeper client (no auth, an open server) writes into a live beatleader tree: fake and
malformed contenders, rewritten contender data, a deleted election node, a deleted root. With
three live beats on a one-second entry: no beat dies, sending resumes within one session timeout
(plus slack for a loaded machine), and every run is published exactly once. And whatever lies in
``election/``, ``schedules/`` and ``entries/``, ``beatleader status``/``resign`` exit 0, 1 or 2
without a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError, NotEmptyError

from beatleader.election.contenders import CONTENDER_MARKER
from beatleader.ops.status import read_contenders, read_status, resign_leader
from beatleader.zk import layout
from beatleader.zk.layout import ContenderInfo
from tests.cluster import (
    ENTRY,
    SendingCluster,
    assert_runs_at_least_once,
    now_ms,
    wait_for_messages,
)
from tests.harness import REPO_ROOT, connected_client, wait_for

pytestmark = pytest.mark.slow

SESSION_TIMEOUT = 2.0  # conftest's BEATLEADER_SESSION_TIMEOUT
#: Generous: a failover is about one session timeout, but two cores are shared by many tests.
RESUME_WITHIN = SESSION_TIMEOUT + 10.0


# --- hostile acts ----------------------------------------------------------------------------


def _fake_first(zk: KazooClient, root: str) -> None:
    """A persistent node named like a contender, sorting before every real one; then resign."""
    zk.create(f"{layout.election_path(root)}/{'0' * 32}{CONTENDER_MARKER}{0:010d}", b"{}")
    resign_leader(zk, root, timeout=RESUME_WITHIN)


def _malformed_names(zk: KazooClient, root: str) -> None:
    """Children whose names do not parse, then a resign so that every contender re-reads them."""
    base = layout.election_path(root)
    for name in (f"x{CONTENDER_MARKER}abc", "garbage", f"{CONTENDER_MARKER}", "é\u2028ü"):
        zk.create(f"{base}/{name}", b"\xff")
    zk.create(f"{base}/zz{CONTENDER_MARKER}", b"", sequence=True)
    resign_leader(zk, root, timeout=RESUME_WITHIN)


def _rewrite_leader(zk: KazooClient, root: str) -> None:
    leader = read_contenders(zk, root)[0]
    zk.set(f"{layout.election_path(root)}/{leader.node}", b'{"identity": "mallory"}')


def _garbage_in_follower(zk: KazooClient, root: str) -> None:
    follower = read_contenders(zk, root)[1]
    zk.set(f"{layout.election_path(root)}/{follower.node}", b"\x00\xff\xfe not json")


def _delete_election(zk: KazooClient, root: str) -> None:
    _rmr(zk, layout.election_path(root))


def _delete_root(zk: KazooClient, root: str) -> None:
    _rmr(zk, root)


def _rmr(zk: KazooClient, path: str) -> None:
    """Delete ``path`` and everything below, however often live beats re-create parts of it."""

    def deleted() -> bool:
        with contextlib.suppress(NotEmptyError):
            zk.delete(path, recursive=True)
            return True
        return False

    wait_for(deleted, 10, message=f"{path} deleted")


ACTS: dict[str, Callable[[KazooClient, str], None]] = {
    "fake persistent contender first": _fake_first,
    "malformed child names": _malformed_names,
    "rewritten leader contender data": _rewrite_leader,
    "garbage in a follower's contender data": _garbage_in_follower,
    "deleted election node": _delete_election,
    "deleted app root": _delete_root,
}


@pytest.mark.parametrize("act", list(ACTS), ids=list(ACTS))
def test_hostile_write_with_live_beats(
    act: str, sending_cluster: SendingCluster, zk_client: KazooClient, zk_root: str
) -> None:
    broker, processes = sending_cluster.broker, sending_cluster.processes
    started = now_ms()

    ACTS[act](zk_client, zk_root)

    wait_for_messages(broker, ENTRY, 3, timeout=RESUME_WITHIN, after_ms=started)
    wait_for(lambda: len(read_contenders(zk_client, zk_root)) == 3, 10, message="3 contenders")
    assert all(p.alive for p in processes), [p.log_tail(30) for p in processes if not p.alive]
    # at least once: an act that moves leadership (e.g. deletes the leader's node) lets the
    # next leader republish the last run, whose mark the old leader could not write (same id).
    # A deleted root deletes the run state: ordinals may start again at 1, in a new incarnation
    # whose task ids differ from the first life's (no id is reused).
    assert_runs_at_least_once(broker.for_entry(ENTRY), zk_root, ENTRY, max_duplicates=1)
    status = read_status(zk_client, zk_root)
    assert status.leader_problem() is None, status.as_dict()
    for process in processes:
        assert not process.log_matches(r"Traceback|unexpected error in the election"), (
            process.log_tail(60)
        )


def test_a_rewritten_leader_node_does_not_livelock_the_fence(
    sending_cluster: SendingCluster, zk_client: KazooClient, zk_root: str
) -> None:
    """The old leader steps down once and re-queues; no stream of fence warnings."""
    old = sending_cluster.leader
    _rewrite_leader(zk_client, zk_root)
    wait_for_messages(sending_cluster.broker, ENTRY, 3, timeout=RESUME_WITHIN, after_ms=now_ms())
    fence_warnings = old.log_matches(r"the fence failed")
    requeued = old.log_matches(r"queueing again with a fresh node")
    assert len(fence_warnings) <= 2, old.log_tail(40)
    assert len(requeued) == 1, old.log_tail(40)
    assert old.alive


# --- status and resign on any data --------------------------------------------------------------

GARBAGE: list[bytes] = [
    b"",
    b"\x00\xff\xfe\x80",
    "é".encode("latin-1"),
    b"not json",
    b"[]",
    b'"a string"',
    b"42",
    b"null",
    b"1e999",
    b"NaN",
    b"[" * 50_000,
    b'{"identity": 5, "host": [], "pid": "12", "version": null}',
    b'{"identity": "i", "host": "h", "pid": true, "version": "v", "started_at": "s",'
    b' "fingerprint": "f"}',
    b'{"last_run_at": {"x": 1}, "total_run_count": 1e999, "skipped_count": "NaN"}',
    b'{"last_run_at": "not a time", "total_run_count": -7, "last_task_id": [1]}',
    b"x" * 900_000,
]

#: Well-typed ContenderInfo whose fingerprints make awkward schedule paths.
AWKWARD_FINGERPRINTS = ["../..", "a/b", "", "\x00", ".", "é\u2028", "f" * 5000, "ok"]


def _info(fingerprint: str) -> bytes:
    return ContenderInfo("mallory", "\x1b[31mhost", 1, "v", "t", fingerprint).encode()


def _plant(
    zk: KazooClient, session: KazooClient, root: str, garbage: list[bytes] = GARBAGE
) -> None:
    """Garbage in every kind of node: contenders (ephemeral and not), entries, schedules."""
    election = layout.election_path(root)
    zk.ensure_path(election)
    for data in garbage:
        prefix = f"{election}/{uuid.uuid4().hex}{CONTENDER_MARKER}"
        session.create(prefix, data, ephemeral=True, sequence=True)
        zk.create(f"{election}/{uuid.uuid4().hex}{CONTENDER_MARKER}", data, sequence=True)
    for fingerprint in AWKWARD_FINGERPRINTS:
        prefix = f"{election}/{uuid.uuid4().hex}{CONTENDER_MARKER}"
        session.create(prefix, _info(fingerprint), ephemeral=True, sequence=True)
    for name in ("é\u2028ü", "x" * 200, "%ZZ", "%2F..", "\u00a0"):
        zk.create(f"{election}/{name}", b"\xff")
    for number, data in enumerate(garbage):
        zk.create(layout.entry_path(root, f"entry {number}\x1b[0m"), data, makepath=True)
        with contextlib.suppress(NodeExistsError):
            zk.create(layout.schedule_path(root, "ok"), data, makepath=True)
        zk.create(layout.schedule_path(root, f"fp{number}"), data, makepath=True)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beatleader.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO_ROOT))},
        cwd=REPO_ROOT,
        timeout=120,
    )


def _assert_survived(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode in (0, 1, 2), (what, result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, (what, result.stderr[-3000:])
    assert "Traceback" not in result.stdout, what
    if result.returncode != 0 and what in ("status --check", "resign"):
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("beatleader: "), (what, result.stderr)


def _run_all(hosts: str, root: str) -> dict[str, subprocess.CompletedProcess[str]]:
    where = ["--zk-hosts", hosts, "--path", root, "--timeout", "5"]
    runs = {
        "status": _cli("status", *where),
        "status --json": _cli("status", "--json", *where),
        "status --check": _cli("status", "--check", *where),
        "resign": _cli("resign", *where),
    }
    for what, result in runs.items():
        _assert_survived(result, what)
    return runs


@pytest.fixture
def foreign_session(zk_server) -> Iterator[KazooClient]:
    """A second session that owns the planted ephemeral nodes."""
    with connected_client(zk_server.hosts) as client:
        yield client


def test_status_and_resign_survive_garbage_everywhere(
    zk_server, zk_client: KazooClient, foreign_session: KazooClient, zk_root: str
) -> None:
    _plant(zk_client, foreign_session, zk_root)

    runs = _run_all(zk_server.hosts, zk_root)

    doc = json.loads(runs["status --json"].stdout)
    assert len(doc["ignored"]) == len(GARBAGE) + 5  # the persistent fakes and malformed names
    assert doc["leader"] is not None and doc["leader_problem"] is not None
    assert runs["status --check"].returncode == 1
    assert len(runs["status --check"].stderr.strip().splitlines()) == 1
    assert "ignoring election node" in runs["status"].stdout
    assert "\x1b" not in runs["status"].stdout, "control characters must be escaped"


def test_status_and_resign_on_a_deleted_root(zk_server) -> None:
    root = f"/bltest/{uuid.uuid4().hex}/never-created"
    runs = _run_all(zk_server.hosts, root)
    # status: a path that does not exist is bad input (2), told apart from "nobody contends"
    expected = {**dict.fromkeys(runs, 2), "resign": 1}
    assert {what: r.returncode for what, r in runs.items()} == expected
    assert all("does not exist" in r.stderr for what, r in runs.items() if what != "resign")


def test_status_survives_nodes_vanishing_mid_read(
    zk_server, zk_client: KazooClient, foreign_session: KazooClient, zk_root: str
) -> None:
    """A thread plants and deletes the whole tree in a loop while status and resign read it."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        while not stop.is_set():
            try:
                _plant(zk_client, foreign_session, zk_root, GARBAGE[:-1])  # not the huge one
                zk_client.delete(zk_root, recursive=True)
            except (NoNodeError, NodeExistsError, NotEmptyError):
                continue
            except BaseException as exc:  # surfaced below
                errors.append(exc)
                return

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        with connected_client(zk_server.hosts) as reader:
            for _ in range(30):
                read_status(reader, zk_root).as_dict()
                resign_leader(reader, zk_root, timeout=0.1)
        _run_all(zk_server.hosts, zk_root)
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors


def test_check_fails_when_only_a_fake_persistent_contender_heads_the_queue(
    zk_server, zk_client: KazooClient, foreign_session: KazooClient, zk_root: str
) -> None:
    """The reproduced bug: a persistent fake sorting first made ``--check`` exit 0 forever."""
    where = ["--zk-hosts", zk_server.hosts, "--path", zk_root, "--timeout", "5"]
    fake = f"{'0' * 32}{CONTENDER_MARKER}{0:010d}"
    zk_client.create(f"{layout.election_path(zk_root)}/{fake}", _info("ok"), makepath=True)

    alone = _cli("status", "--check", *where)
    foreign_session.create(
        f"{layout.election_path(zk_root)}/{uuid.uuid4().hex}{CONTENDER_MARKER}",
        _info("ok"),
        ephemeral=True,
        sequence=True,
    )
    behind = _cli("status", "--json", *where)

    assert alone.returncode == 1 and "no leader" in alone.stderr, alone.stderr
    assert behind.returncode == 0, behind.stderr
    doc = json.loads(behind.stdout)
    assert doc["leader"]["node"] != fake and doc["leader_problem"] is None
    assert doc["ignored"] == [{"node": fake, "reason": "it is not ephemeral (no session owns it)"}]
    assert any(fake in w for w in doc["warnings"])
