"""Runtime entries on the leader (``beatleader/runtime.py``), in this process, on a real ZooKeeper.

Schedulers run here on kombu's ``memory://`` broker and record the task ids they published
(``Recording`` of ``test_outbox.py``); the nodes are written as ``beatleader entry`` writes them
(``tests/runtime_support.py``). The same behaviours with real beat and worker processes:
``test_runtime_live.py``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kazoo.security import make_digest_acl

from beatleader.beat.sources.runtimewatch import RunRequest
from beatleader.beat.state import StateStore, Write
from beatleader.testing.proxy import ZkProxy
from beatleader.zk import layout, multiread
from beatleader.zk.layout import EntryState
from tests.harness import contenders, entry_state, wait_for
from tests.runtime_support import (
    ReadCounter,
    definition,
    pause,
    put_definition,
    put_raw,
    request_run,
    requests,
    resume,
)
from tests.test_outbox import Recorder, Recording, Schedulers, ids, run_until, schedulers

__all__ = ["schedulers"]  # a fixture

HOUR = {"every": 3600}


@pytest.fixture
def make_leader(schedulers) -> Any:
    def make(static: dict[str, Any], recorder: Recorder | None = None) -> Recording:
        return schedulers.make(Recording, static, recorder)

    return make


def lead(scheduler: Recording) -> Recording:
    wait_for(lambda: scheduler.is_leader, 20, message="leads")  # see test_outbox.elected
    run_until(scheduler, lambda: scheduler._loaded_generation == scheduler._election.generation)
    return scheduler


def test_definitions_are_read_at_takeover_and_followed_while_leading(
    make_leader, zk_client, zk_root
) -> None:
    put_definition(zk_client, zk_root, "fast", definition({"every": 0.2}, "v1"))
    put_definition(zk_client, zk_root, "off", definition({"every": 0.2}, "x", enabled=False))
    scheduler = lead(make_leader({"static": HOUR}))
    assert scheduler.dynamic_names == {"fast"}
    run_until(scheduler, lambda: len(scheduler.published) >= 2)

    put_definition(zk_client, zk_root, "fast", definition({"every": 0.2}, "v2"))
    run_until(scheduler, lambda: scheduler.schedule["fast"].args == ["v2"])
    put_definition(zk_client, zk_root, "new", definition(HOUR, "n"))
    run_until(scheduler, lambda: "new" in scheduler.schedule)
    put_definition(zk_client, zk_root, "fast", definition({"every": 0.2}, "v2", enabled=False))
    run_until(scheduler, lambda: "fast" not in scheduler.schedule)
    zk_client.delete(layout.definition_path(zk_root, "new"))
    run_until(scheduler, lambda: "new" not in scheduler.schedule)

    assert scheduler.dynamic_names == frozenset()
    assert "off" not in scheduler.published
    fast = [
        t
        for t in scheduler.published
        if t in ids(zk_root, "fast", *range(1, 100), client=zk_client)
    ]
    assert fast == ids(zk_root, "fast", *range(1, len(fast) + 1), client=zk_client)
    assert entry_state(zk_client, zk_root, "fast") is not None  # run state kept


def test_a_server_without_multi_read_costs_one_takeover_then_reads_node_by_node(
    make_leader, zk_client, zk_root, monkeypatch, caplog
) -> None:
    """ZooKeeper before 3.6 answers a multi-read UnimplementedError and closes the connection
    (an opcode 3.8 does not know stands in for it): the leader steps down on that connection
    loss, keeps its session, takes over again reading node by node, and follows changes."""
    monkeypatch.setattr(multiread.MultiRead, "type", 99)
    names = [f"rt-{number:02d}" for number in range(2 * multiread.MIN_BATCH)]
    for name in names:
        put_definition(zk_client, zk_root, name, definition(HOUR, name))
    scheduler = make_leader({"static": HOUR})
    wait_for(lambda: scheduler._zk is not None, 20, message="the client exists")
    session = scheduler._zk.client_id
    run_until(
        scheduler,
        lambda: (
            scheduler.dynamic_names == set(names)
            and scheduler._loaded_generation == scheduler._election.generation
        ),
    )
    assert scheduler._zk in multiread._refused
    assert scheduler._zk.client_id == session
    assert scheduler._election.generation <= 2  # the first takeover, then one more at most
    refusals = [r for r in caplog.records if "has no multi-read" in r.getMessage()]
    assert [r.levelname for r in refusals] == ["WARNING"]

    put_definition(zk_client, zk_root, names[3], definition(HOUR, "changed"))
    run_until(scheduler, lambda: scheduler.schedule[names[3]].args == ["changed"])


def test_run_now_commits_the_next_ordinal_and_consumes_the_request_in_one_transaction(
    make_leader, zk_client, zk_root
) -> None:
    scheduler = lead(make_leader({"static": HOUR}))
    run_until(scheduler, lambda: not scheduler.unpublished())
    request_run(zk_client, zk_root, "static")
    run_until(scheduler, lambda: len(scheduler.published) >= 1)
    assert scheduler.published == ids(zk_root, "static", 1, client=zk_client)
    assert requests(zk_client, zk_root) == []
    state = entry_state(zk_client, zk_root, "static")
    assert state is not None and state["total_run_count"] == 1
    # the regular schedule is unchanged: not due for an hour still
    assert scheduler.schedule["static"].last_run_at < scheduler.server_now()
    request_run(zk_client, zk_root, "static")
    request_run(zk_client, zk_root, "static")
    run_until(scheduler, lambda: len(scheduler.published) >= 3)
    for _ in range(10):
        scheduler.tick()
    assert scheduler.published == ids(zk_root, "static", 1, 2, 3, client=zk_client)


def test_a_request_already_gone_at_commit_is_not_run(make_leader, zk_client, zk_root) -> None:
    scheduler = lead(make_leader({"static": HOUR}))
    node = f"{layout.quote_entry_name('static')}{layout.REQUEST_MARKER}0000000007"
    path = f"{layout.requests_path(zk_root)}/{node}"
    scheduler._requests = [RunRequest(node, path, "static", 7)]  # listed, then withdrawn
    scheduler.tick()
    assert scheduler.run_requests == []
    assert scheduler.published == []
    assert entry_state(zk_client, zk_root, "static") is None  # the run was not committed


def test_the_commit_consumes_the_request_or_commits_nothing(zk_client, zk_root) -> None:
    fence = zk_client.create(f"{zk_root}/election/n", b"", makepath=True, ephemeral=True)
    store = StateStore(zk_client, zk_root)
    state = EntryState(None, 1, "id", "test", published=False)
    present = request_run(zk_client, zk_root, "a")
    missing = f"{layout.requests_path(zk_root)}/b{layout.REQUEST_MARKER}0000000099"
    outcome = store.commit(
        fence, [Write("a", state, None, consume=present), Write("b", state, None, consume=missing)]
    )
    assert set(outcome.committed) == {"a"} and outcome.gone == ["b"]
    assert requests(zk_client, zk_root) == []
    assert entry_state(zk_client, zk_root, "b") is None
    unknown = request_run(zk_client, zk_root, "c")
    assert store.discard(fence, [unknown, missing]) == ([unknown, missing], False)
    zk_client.delete(fence)
    again = request_run(zk_client, zk_root, "a")
    assert store.discard(fence, [again]) == ([], True)
    outcome = store.commit(fence, [Write("a", state, 0, consume=again)])
    assert outcome.lost_leadership and not outcome.committed
    assert requests(zk_client, zk_root) == [again.rsplit("/", 1)[1]]


def test_a_malformed_request_is_deleted_at_once_one_naming_no_entry_after_its_grace(
    make_leader, zk_client, zk_root
) -> None:
    recorder = Recorder()
    scheduler = lead(make_leader({"static": HOUR}, recorder))
    scheduler.unknown_request_grace = 3.0
    nobody = request_run(zk_client, zk_root, "nobody").rsplit("/", 1)[1]
    zk_client.create(f"{layout.requests_path(zk_root)}/garbage", b"\xff")
    run_until(scheduler, lambda: requests(zk_client, zk_root) == [nobody])
    assert [kind for kind, _ in recorder.problems] == ["run-request"]  # the malformed one
    created = zk_client.exists(f"{layout.requests_path(zk_root)}/{nobody}").ctime / 1000.0
    run_until(scheduler, lambda: requests(zk_client, zk_root) == [])
    assert scheduler.server_now().timestamp() - created >= 3.0
    assert [kind for kind, _ in recorder.problems] == ["run-request", "run-request"]
    assert "kept 3 s" in recorder.problems[1][1]
    assert scheduler.published == []


def test_a_request_for_an_entry_defined_later_runs_once_it_is(
    make_leader, zk_client, zk_root
) -> None:
    """A rolling deploy: the request names an entry this leader does not have yet."""
    scheduler = lead(make_leader({"static": HOUR}))
    request_run(zk_client, zk_root, "later")
    for _ in range(20):
        scheduler.tick()
    assert len(requests(zk_client, zk_root)) == 1  # kept: within its grace
    put_definition(zk_client, zk_root, "later", definition(HOUR, "l"))
    run_until(scheduler, lambda: requests(zk_client, zk_root) == [])
    assert scheduler.published == ids(zk_root, "later", 1, client=zk_client)


def test_a_paused_static_entry_stops_can_run_now_and_resumes_with_its_ordinals(
    make_leader, zk_client, zk_root
) -> None:
    scheduler = lead(make_leader({"fast": {"every": 0.2}}))
    run_until(scheduler, lambda: len(scheduler.published) >= 2)
    pause(zk_client, zk_root, "fast")
    run_until(scheduler, lambda: scheduler.paused_names == {"fast"})
    stopped = len(scheduler.published)
    for _ in range(10):
        scheduler.tick()
    assert len(scheduler.published) <= stopped + 1  # at most the run already committed
    paused_count = len(scheduler.published)
    request_run(zk_client, zk_root, "fast")
    run_until(scheduler, lambda: len(scheduler.published) == paused_count + 1)
    assert "fast" not in scheduler.schedule  # still paused
    resume(zk_client, zk_root, "fast")
    run_until(scheduler, lambda: len(scheduler.published) >= paused_count + 3)
    assert scheduler.published == ids(
        zk_root, "fast", *range(1, len(scheduler.published) + 1), client=zk_client
    )


def test_hostile_definition_nodes_are_reported_once_and_stop_nothing(
    make_leader, zk_client, zk_root
) -> None:
    recorder = Recorder()
    put_definition(zk_client, zk_root, "good", definition({"every": 0.2}, "good"))
    hostile = {
        "not-json": b"\xff\xfe{",
        "not-object": b"[1, 2]",
        "bad-task": json.dumps({"task": 5, "schedule": {"every": 1}}).encode(),
        "bad-schedule": json.dumps({"task": "t", "schedule": {"every": -1}}).encode(),
        "deep": b"[" * 100000,
        "huge": b'{"task": "' + b"x" * 200_000 + b'"}',
    }
    for name, data in hostile.items():
        put_raw(zk_client, zk_root, name, data)
    scheduler = lead(make_leader({}, recorder))
    run_until(scheduler, lambda: len(scheduler.published) >= 2)
    assert scheduler.dynamic_names == {"good"}
    reported = [detail for kind, detail in recorder.problems if kind == "definition"]
    assert len(reported) == len(hostile)
    # a valid entry overwritten with garbage while leading: reported, no longer scheduled
    put_raw(zk_client, zk_root, "good", b"null")
    run_until(scheduler, lambda: "good" not in scheduler.schedule)
    put_definition(zk_client, zk_root, "good", definition({"every": 0.2}, "good"))
    run_until(scheduler, lambda: "good" in scheduler.schedule)
    assert len([k for k, _ in recorder.problems if k == "definition"]) == len(hostile) + 1


def test_a_follower_and_the_watches_of_an_ended_leadership_make_no_request(
    make_leader, zk_client, zk_root
) -> None:
    put_definition(zk_client, zk_root, "dyn", definition(HOUR, "v1"))
    first = lead(make_leader({}))
    second = make_leader({})
    assert first.dynamic_names == {"dyn"}
    # the second queues behind the first before the first resigns: else the first, queueing
    # again at once, could be first again (a race of the test, seen under load)
    wait_for(lambda: len(contenders(zk_client, zk_root)) == 2, 20, message="second queues")
    counter = ReadCounter(first._zk)
    zk_client.delete(first._election.node)  # "resign": the second leads, the first queues again
    wait_for(lambda: second.is_leader, 20, message="second leads")
    run_until(second, lambda: second.dynamic_names == {"dyn"})
    wait_for(lambda: len(contenders(zk_client, zk_root)) == 2, 20, message="first queues")
    counter.reset()
    put_definition(zk_client, zk_root, "dyn", definition(HOUR, "v2"))
    request_run(zk_client, zk_root, "dyn")
    pause(zk_client, zk_root, "dyn")  # a static pause of a runtime name: ignored
    run_until(second, lambda: second.schedule["dyn"].args == ["v2"] and second.published)
    assert not first.is_leader
    folders = [f(zk_root) for f in (layout.definitions_path, layout.paused_path)]
    assert counter.under(*folders, layout.requests_path(zk_root)) == []
    assert counter.total == 0, counter.paths  # the follower made no request at all
    watch = first.runtime._watch  # its watches fired (armed by its leadership) and marked nothing
    assert not (watch._changed or watch._requests_changed or watch._paused_changed)
    assert second.published == ids(zk_root, "dyn", 1, client=zk_client)


def test_nodes_and_folders_the_leader_may_not_read_are_reported_and_skipped(
    make_leader, zk_client, zk_root
) -> None:
    recorder = Recorder()
    locked = [make_digest_acl("someone", "else", all=True)]
    put_definition(zk_client, zk_root, "good", definition({"every": 0.2}, "good"))
    zk_client.create(
        layout.definition_path(zk_root, "secret"), definition(HOUR, "s").encode(), acl=locked
    )
    zk_client.create(layout.paused_path(zk_root), b"", acl=locked)
    scheduler = lead(make_leader({"static": HOUR}, recorder))
    run_until(scheduler, lambda: len(scheduler.published) >= 2)
    assert scheduler.dynamic_names == {"good"}
    details = [detail for kind, detail in recorder.problems if kind == "definition"]
    assert len(details) == 2
    assert any("'secret'" in d and "NoAuth" in d for d in details)
    assert any(layout.paused_path(zk_root) in d for d in details)


def test_after_a_lost_connection_the_watches_are_armed_again_and_nothing_is_missed(
    zk_server, zk_client, zk_root
) -> None:
    put_definition(zk_client, zk_root, "dyn", definition(HOUR, "v1"))
    with ZkProxy(zk_server.hosts) as proxy:
        made = Schedulers(proxy.hosts, zk_root, session_timeout=6.0)
        try:
            scheduler = lead(made.make(Recording, {}))
            generation = scheduler._election.generation
            proxy.cut()  # same session, new connection: the server forgot this one's watches
            put_definition(zk_client, zk_root, "dyn", definition(HOUR, "v2"))
            run_until(scheduler, lambda: scheduler.schedule["dyn"].args == ["v2"], timeout=30)
            assert scheduler._election.generation > generation  # a new takeover read it
            put_definition(zk_client, zk_root, "dyn", definition(HOUR, "v3"))  # a watch again
            run_until(scheduler, lambda: scheduler.schedule["dyn"].args == ["v3"])
        finally:
            made.close()


def test_a_flood_of_bad_requests_is_deleted_a_batch_per_tick_and_stalls_nothing(
    make_leader, zk_client, zk_root
) -> None:
    scheduler = lead(make_leader({"fast": {"every": 0.2}}))
    folder = layout.requests_path(zk_root)
    zk_client.ensure_path(folder)
    transaction = zk_client.transaction()
    for number in range(300):
        transaction.create(f"{folder}/junk-{number}", b"")
    transaction.commit()
    run_until(scheduler, lambda: requests(zk_client, zk_root) == [], timeout=30)
    assert len(scheduler.published) >= 2  # the schedule went on meanwhile


class OwnSourceOnly(Recording):
    """A subclass with its own dynamic entries that does not call ``super()``'s."""

    def dynamic_entries(self) -> dict[str, Any]:
        return {}


def test_a_subclass_that_does_not_call_super_dynamic_entries_follows_no_definitions(
    schedulers, zk_client, zk_root
) -> None:
    put_definition(zk_client, zk_root, "zk", definition({"every": 0.2}, "zk"))
    scheduler = lead(schedulers.make(OwnSourceOnly, {}))
    put_definition(zk_client, zk_root, "later", definition({"every": 0.2}, "later"))
    request_run(zk_client, zk_root, "zk")
    for _ in range(20):
        time.sleep(min(scheduler.tick(), 0.05))
    assert scheduler.dynamic_names == frozenset()
    assert scheduler.published == []
