"""schedules/ nodes (old and new format), app mismatch, PeerWatch, prune: a real ZooKeeper.

Contenders are simulated kazoo sessions holding ContenderInfo, as in ``test_cli_unit``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from unittest import mock

import pytest
from kazoo.client import KazooClient

from beatleader.election.peers import APP_MISMATCH, SCHEDULE_MISMATCH, PeerWatch
from beatleader.observe import Observer
from beatleader.ops.prune import PruneRefused, plan_prune, prune
from beatleader.ops.status import read_status
from beatleader.schedules.describe import PlannedEntry, decode_schedule, encode_schedule, next_due
from beatleader.zk.layout import ContenderInfo, EntryState, election_path, entry_path, schedule_path
from tests.harness import connected_client, contender_prefix, wait_for


@pytest.fixture
def root() -> str:
    return f"/beatleader-schedules-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def zk(zk_server) -> Iterator[KazooClient]:
    with connected_client(zk_server.hosts) as client:
        yield client


@pytest.fixture
def sessions(zk_server) -> Iterator[list[KazooClient]]:
    opened: list[KazooClient] = []
    yield opened
    for session in opened:
        session.stop()
        session.close()


def info(identity: str, fingerprint: str = "fp-a", app: str | None = "proj") -> ContenderInfo:
    return ContenderInfo(identity, "host", 1, "0", "2024-01-01", fingerprint, app)


def contend(zk_server, sessions: list[KazooClient], root: str, who: ContenderInfo) -> str:
    session = KazooClient(hosts=zk_server.hosts)
    session.start(timeout=15)
    sessions.append(session)
    node = session.create(
        contender_prefix(root), who.encode(), ephemeral=True, sequence=True, makepath=True
    )
    return str(node)


def put_state(zk: KazooClient, root: str, name: str) -> None:
    state = EntryState("2024-05-01T12:00:00+00:00", 3, "t", "alpha")
    zk.create(entry_path(root, name), state.encode(), makepath=True)


def test_contender_info_decodes_with_and_without_app() -> None:
    with_app = info("a")
    assert ContenderInfo.decode(with_app.encode()) == with_app
    old = {k: v for k, v in json.loads(with_app.encode()).items() if k != "app"}
    assert ContenderInfo.decode(json.dumps(old).encode()) == info("a", app=None)
    assert ContenderInfo.decode(json.dumps({**old, "app": 3}).encode()) is None


def test_schedule_node_formats_old_and_new() -> None:
    plans = [PlannedEntry("a", "t.a", "every 30s", 30.0), PlannedEntry("b", "t.b", "x")]
    assert decode_schedule(encode_schedule(plans)) == {"a": plans[0], "b": plans[1]}
    assert decode_schedule(b'["a", "b"]') == {"a": PlannedEntry("a"), "b": PlannedEntry("b")}
    weird = decode_schedule(b'{"a": 1, "b": {"every": true, "schedule": 5}}')
    assert weird == {"a": PlannedEntry("a"), "b": PlannedEntry("b")}
    huge = decode_schedule(json.dumps({"c": {"every": 10**400}, "d": {"every": -1e308}}).encode())
    assert huge == {"c": PlannedEntry("c"), "d": PlannedEntry("d")}  # no OverflowError
    for garbage in (b"\xff", b"[1]", b"3", b""):
        assert decode_schedule(garbage) is None


def test_next_due_of_interval_and_crontab() -> None:
    now = datetime(2026, 1, 1, 12, 0, 30, tzinfo=timezone.utc)
    every = PlannedEntry("a", every=30.0)
    assert next_due(every, "2026-01-01T12:00:10+00:00", now) == datetime(
        2026, 1, 1, 12, 0, 40, tzinfo=timezone.utc
    )
    assert next_due(every, None, now) is None  # the leader counts from its own start
    paris = PlannedEntry("b", crontab="0 3 * * *", timezone="Europe/Paris")
    assert next_due(paris, None, now) == datetime(2026, 1, 2, 2, 0, tzinfo=timezone.utc)
    assert next_due(PlannedEntry("c", crontab="99 * * * *"), None, now) is None
    assert next_due(PlannedEntry("d", schedule="<solar>"), None, now) is None


def test_status_reads_both_schedule_formats_and_lists_never_run_entries(
    zk_server, zk: KazooClient, sessions: list[KazooClient], root: str
) -> None:
    contend(zk_server, sessions, root, info("new", "fp-new"))
    contend(zk_server, sessions, root, info("old", "fp-old"))
    plans = [PlannedEntry("ticking", "t", "every 60s", 60.0), PlannedEntry("fresh", "t", "x")]
    zk.create(schedule_path(root, "fp-new"), encode_schedule(plans), makepath=True)
    zk.create(schedule_path(root, "fp-old"), json.dumps(["ticking", "legacy"]).encode())
    put_state(zk, root, "ticking")
    put_state(zk, root, "orphan")

    status = read_status(zk, root)

    entries = {e.name: e for e in status.entries}
    assert sorted(entries) == ["fresh", "legacy", "orphan", "ticking"]
    assert entries["ticking"].next_due == "2024-05-01T12:01:00+00:00"
    assert entries["ticking"].plan is not None and entries["ticking"].plan.schedule == "every 60s"
    assert not entries["fresh"].stored and entries["fresh"].scheduled
    assert entries["legacy"].plan == PlannedEntry("legacy")
    assert entries["orphan"].scheduled is False
    assert any("'orphan'" in w for w in status.warnings)
    assert not any("unreadable" in w for w in status.warnings)


def test_status_warns_about_instances_of_different_apps(
    zk_server, zk: KazooClient, sessions: list[KazooClient], root: str
) -> None:
    contend(zk_server, sessions, root, info("a", app="proj"))
    contend(zk_server, sessions, root, info("b", app="other"))
    contend(zk_server, sessions, root, info("c", app=None))  # an older version: no app

    warnings = read_status(zk, root).warnings

    found = [w for w in warnings if "different apps" in w]
    assert len(found) == 1 and "'proj': a" in found[0] and "'other': b" in found[0]


class Problems(Observer):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def problem(self, kind: str, detail: str) -> None:
        with self.lock:
            self.seen.append((kind, detail))


def test_peer_watch_reports_each_disagreeing_contender_once(
    zk_server, zk: KazooClient, sessions: list[KazooClient], root: str, caplog
) -> None:
    own = info("me")
    own_node = contend(zk_server, sessions, root, own)
    problems = Problems()
    watch = PeerWatch(zk, election_path(root), own, problems, lambda: own_node)
    watch.leadership_changed(True, "elected")  # the leader watches the queue
    watch.start()
    try:
        contend(zk_server, sessions, root, info("same"))
        contend(zk_server, sessions, root, info("app", app="other"))
        wait_for(lambda: problems.seen, 10, message="the app mismatch")
        contend(zk_server, sessions, root, info("sched", fingerprint="fp-b"))
        wait_for(lambda: len(problems.seen) == 2, 10, message="the schedule mismatch")
        contend(zk_server, sessions, root, info("same2"))  # a change: everything read again
        wait_for(lambda: len(watch._infos) == 4, 10, message="4 other contenders read")
    finally:
        watch.stop()
        watch.join(5)

    assert [kind for kind, _ in problems.seen] == [APP_MISMATCH, SCHEDULE_MISMATCH]
    assert "'other'" in problems.seen[0][1] and "fp-b" in problems.seen[1][1]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2


def test_a_follower_checks_the_leader_once_when_it_joins_then_stays_silent(
    zk_server, zk: KazooClient, sessions: list[KazooClient], root: str, caplog
) -> None:
    contend(zk_server, sessions, root, info("leader", app="other"))  # leads: another app
    own = info("me")
    own_node = contend(zk_server, sessions, root, own)
    problems = Problems()
    lists = mock.patch.object(zk, "get_children", wraps=zk.get_children)
    reads = mock.patch.object(zk, "get_async", wraps=zk.get_async)
    watch = PeerWatch(zk, election_path(root), own, problems, lambda: own_node)
    with lists as listed, reads as read:
        watch.start()
        wait_for(lambda: problems.seen, 10, message="the leader's app mismatch")
        watch._wake.set()  # a reconnection, a stray event: a follower that looked does not again
        contend(zk_server, sessions, root, info("sched", fingerprint="fp-b"))  # a follower
        time.sleep(1.0)  # an observation window: nothing more is read
        assert (listed.call_count, read.call_count) == (1, 1)  # the queue, the leader's node
    assert [k for k, _ in problems.seen] == [APP_MISMATCH]
    try:
        watch.leadership_changed(True, "elected")  # leading now: it watches, and sees it
        wait_for(lambda: len(problems.seen) == 2, 10, message="the schedule mismatch")
    finally:
        watch.stop()
        watch.join(5)


def test_prune_refuses_on_unknown_schedules_and_keeps_a_node_written_meanwhile(
    zk_server, zk: KazooClient, sessions: list[KazooClient], root: str
) -> None:
    contend(zk_server, sessions, root, info("a"))  # no schedules/fp-a node: unknown
    put_state(zk, root, "one")
    put_state(zk, root, "two")

    with pytest.raises(PruneRefused, match="unknown"):
        plan_prune(zk, root)
    zk.create(schedule_path(root, "fp-a"), encode_schedule([]), makepath=True)
    stale = plan_prune(zk, root)
    assert [s.name for s in stale] == ["one", "two"]
    zk.set(entry_path(root, "two"), EntryState(None, 4, None, "leader").encode())

    result = prune(zk, root, stale)

    assert (result.deleted, result.kept) == (["one"], ["two"])
    assert zk.exists(entry_path(root, "one")) is None
    assert zk.exists(entry_path(root, "two")) is not None
    with pytest.raises(PruneRefused, match="does not exist"):
        plan_prune(zk, root + "-typo")


def test_a_runtime_crontab_is_next_due_by_cron_rules_a_static_one_by_celery() -> None:
    """Paris falls back at 01:00 UTC on 2026-10-25: 02:00 CEST, then 02:00 CET again."""
    last = "2026-10-25T00:00:00+00:00"  # 02:00 CEST
    now = datetime(2026, 10, 25, 0, 10, tzinfo=timezone.utc)
    runtime = PlannedEntry("r", crontab="0 * * * *", timezone="Europe/Paris", cron_rules=True)
    static = PlannedEntry("s", crontab="0 * * * *", timezone="Europe/Paris")
    assert next_due(runtime, last, now) == datetime(2026, 10, 25, 1, tzinfo=timezone.utc)
    assert next_due(static, last, now) == datetime(2026, 10, 25, 2, tzinfo=timezone.utc)
    quiet = "2026-10-20T00:00:00+00:00"
    assert next_due(runtime, quiet, now) == next_due(static, quiet, now)
    # published, so that a reader computes a static crontab under cron's rules as the leader does
    assert runtime.as_json()["cron_rules"] is True and "cron_rules" not in static.as_json()
