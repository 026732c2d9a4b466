"""The outbox, entry-data validation and batch isolation, with an in-process scheduler.

A real ZooKeeper (the suite's); the scheduler runs in this process on kombu's ``memory://``
broker, and a subclass records what it published and can make the broker fail. Real-process
fault injection (proxies, signals, a stopped Redis) is in ``test_outbox_faults.py``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, TypeVar

import pytest
from kazoo.client import KazooClient
from kazoo.security import make_acl
from kombu.exceptions import OperationalError

from beatleader.beat.scheduler import Scheduler
from beatleader.config import Settings
from beatleader.observe import Observer, Observers
from beatleader.zk import layout
from beatleader.zk.layout import EntryState
from tests.app import make_app
from tests.harness import entry_state, wait_for


class Recorder(Observer):
    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []
        self.sent_ids: list[str] = []

    def problem(self, kind: str, detail: str) -> None:
        self.problems.append((kind, detail))

    def sent(self, entry: str, task_id: str, lateness: float) -> None:
        self.sent_ids.append(task_id)


class Recording(Scheduler):
    """Records published task ids; ``broker_down`` makes publishing fail as a dead broker does."""

    broker_down = False
    published: list[str]

    def publish_run(self, entry: Any, ordinal: int, incarnation: str | None = None) -> str:
        if self.broker_down:
            raise OperationalError("broker unreachable (test)")
        task_id = super().publish_run(entry, ordinal, incarnation)
        self.published.append(task_id)
        return task_id


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


R = TypeVar("R", bound=Recording)


class Schedulers:
    """The in-process schedulers of one test (``Recording`` or a subclass), closed at its end."""

    def __init__(self, hosts: str, root: str, session_timeout: float = 2.0) -> None:
        self.hosts, self.root, self.session_timeout = hosts, root, session_timeout
        self.made: list[Recording] = []

    def make(self, cls: type[R], schedule: dict[str, Any], recorder: Recorder | None = None) -> R:
        """A scheduler of ``cls`` on the app of ``schedule`` (``TEST_SCHEDULE``), not ticked yet."""
        app = make_app({"TEST_SCHEDULE": json.dumps(schedule)}, set_as_current=False)
        settings = Settings.from_app(
            app, zk_hosts=self.hosts, path=self.root, session_timeout=self.session_timeout
        )
        observers = Observers(recorder or Recorder())
        scheduler = cls(app, beatleader_settings=settings, beatleader_observers=observers)
        scheduler.published = []
        self.made.append(scheduler)
        return scheduler

    def close(self) -> None:
        for scheduler in self.made:
            scheduler.close()


@pytest.fixture
def schedulers(zk_server, zk_root) -> Iterator[Schedulers]:
    made = Schedulers(zk_server.hosts, zk_root)
    yield made
    made.close()


def elected(scheduler: R) -> R:
    """``scheduler`` once its election says it leads (its takeover comes with the next tick).

    The election runs in its own thread: no tick is needed. (A tick in the condition returned
    0.0 only on the follower path, so a scheduler elected before its first tick never passed.)
    """
    wait_for(lambda: scheduler.is_leader, 20, message="leads")
    return scheduler


@pytest.fixture
def make_scheduler(schedulers, recorder) -> Any:
    return lambda schedule: elected(schedulers.make(Recording, schedule, recorder))


def ids(root: str, name: str, *ordinals: int, client: KazooClient | None = None) -> list[str]:
    """Task ids of runs ``ordinals``; with ``client``, of the entry's stored incarnation."""
    state = entry_state(client, root, name) if client is not None else None
    incarnation = state.get("incarnation") if state else None
    return [layout.run_task_id(root, name, n, incarnation) for n in ordinals]


def run_until(scheduler: Recording, condition: Any, timeout: float = 10) -> None:
    def step() -> bool:
        time.sleep(min(scheduler.tick(), 0.05))
        return bool(condition())

    wait_for(step, timeout, message="condition while ticking")


def write_state(client: KazooClient, root: str, name: str, data: bytes) -> None:
    client.ensure_path(layout.entries_path(root))
    client.create(layout.entry_path(root, name), data)


def test_a_committed_unpublished_run_is_published_by_the_next_leader_with_its_id(
    make_scheduler, zk_client, zk_root, recorder
) -> None:
    now = datetime.now(timezone.utc).isoformat()
    state = EntryState(now, 7, "x", "gone", published=False)
    write_state(zk_client, zk_root, "e", state.encode())
    scheduler = make_scheduler({"e": {"every": 3600}})
    run_until(scheduler, lambda: scheduler.published)
    assert scheduler.published == ids(
        zk_root, "e", 7, client=zk_client
    )  # run 7 again, not a new run 8
    run_until(scheduler, lambda: entry_state(zk_client, zk_root, "e")["published"], 10)
    assert entry_state(zk_client, zk_root, "e")["total_run_count"] == 7
    assert recorder.sent_ids == ids(zk_root, "e", 7, client=zk_client)


def test_a_legacy_state_keeps_its_ids_and_its_next_run_gets_an_incarnation(
    make_scheduler, zk_client, zk_root
) -> None:
    """State written before incarnations: run 7 is republished with its old id, run 8 is new."""
    now = datetime.now(timezone.utc).isoformat()
    write_state(zk_client, zk_root, "e", EntryState(now, 7, "x", "old", published=False).encode())
    scheduler = make_scheduler({"e": {"every": 0.2}})
    run_until(scheduler, lambda: len(scheduler.published) >= 2)
    incarnation = entry_state(zk_client, zk_root, "e")["incarnation"]
    assert layout.is_incarnation(incarnation)
    assert scheduler.published[:2] == [
        layout.run_task_id(zk_root, "e", 7),
        layout.run_task_id(zk_root, "e", 8, incarnation),
    ]


def test_deleted_state_starts_a_new_incarnation_whose_ids_are_new(
    make_scheduler, zk_client, zk_root
) -> None:
    first = make_scheduler({"e": {"every": 0.2}})
    run_until(first, lambda: len(first.published) >= 3)
    first.close()
    old = entry_state(zk_client, zk_root, "e")["incarnation"]
    zk_client.delete(layout.entry_path(zk_root, "e"))  # prune, or a hostile client without ACLs
    second = make_scheduler({"e": {"every": 0.2}})
    run_until(second, lambda: len(second.published) >= 3)
    new = entry_state(zk_client, zk_root, "e")["incarnation"]
    assert new != old
    assert second.published[:3] == [layout.run_task_id(zk_root, "e", n, new) for n in (1, 2, 3)]
    assert not set(first.published) & set(second.published)


def test_a_broker_failure_keeps_the_run_unpublished_and_retries_it(
    make_scheduler, zk_client, zk_root, recorder
) -> None:
    scheduler = make_scheduler({"e": {"every": 0.2}})
    run_until(scheduler, lambda: len(scheduler.published) >= 2)
    scheduler.broker_down = True
    run_until(scheduler, lambda: scheduler.unpublished())
    held = scheduler.unpublished()["e"]
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # 10 intervals: the entry is held, not re-run
        time.sleep(min(scheduler.tick(), 0.05))
    stored = entry_state(zk_client, zk_root, "e")
    assert stored["total_run_count"] == held and stored["published"] is False
    assert any(kind == "publish" for kind, _ in recorder.problems)
    scheduler.broker_down = False
    run_until(
        scheduler, lambda: ids(zk_root, "e", held, client=zk_client)[0] in scheduler.published
    )
    run_until(scheduler, lambda: len(scheduler.published) >= held + 2)
    assert scheduler.published == ids(
        zk_root, "e", *range(1, len(scheduler.published) + 1), client=zk_client
    )


@pytest.mark.parametrize("data", [b"garbage", b'{"total_run_count": -5}', b'{"x": 1e999}'])
def test_unreadable_entry_data_never_restarts_the_ordinals(
    make_scheduler, zk_client, zk_root, recorder, data: bytes
) -> None:
    write_state(zk_client, zk_root, "e", EntryState(None, 41, None, "old").encode())
    for _ in range(3):  # version 3: no committed run can be above ordinal 4
        zk_client.set(layout.entry_path(zk_root, "e"), data)
    scheduler = make_scheduler({"e": {"every": 0.2}})
    run_until(scheduler, lambda: len(scheduler.published) >= 2)
    assert scheduler.published[:2] == ids(zk_root, "e", 5, 6, client=zk_client)
    problems = [detail for kind, detail in recorder.problems if kind == "entry-data"]
    assert len(problems) == 1 and "unreadable" in problems[0]
    assert entry_state(zk_client, zk_root, "e")["total_run_count"] >= 6  # repaired


def test_a_last_run_at_in_the_future_is_reported_not_obeyed(
    make_scheduler, zk_client, zk_root, recorder
) -> None:
    future = EntryState("2027-06-01T00:00:00+00:00", 3, None, "skewed")
    write_state(zk_client, zk_root, "e", future.encode())
    scheduler = make_scheduler({"e": {"every": 1}})
    run_until(scheduler, lambda: scheduler.published, timeout=5)
    assert scheduler.published == ids(zk_root, "e", 4, client=zk_client)
    assert [kind for kind, _ in recorder.problems] == ["entry-time"]


def test_a_read_only_entry_backs_off_and_does_not_block_the_others(
    make_scheduler, zk_client, zk_root, recorder
) -> None:
    write_state(zk_client, zk_root, "locked", EntryState(None, 0, None, "x").encode())
    zk_client.set_acls(
        layout.entry_path(zk_root, "locked"), [make_acl("world", "anyone", read=True)]
    )
    scheduler = make_scheduler({"locked": {"every": 0.2}, "free": {"every": 0.2}})
    started = time.monotonic()
    run_until(scheduler, lambda: len(scheduler.published) >= 6)
    assert set(scheduler.published) <= set(ids(zk_root, "free", *range(1, 20), client=zk_client))
    writes = [d for kind, d in recorder.problems if kind == "entry-write"]
    assert len(writes) == 1 and "locked" in writes[0]  # once per change, not per attempt
    failures = scheduler._entry_backoff.failures("locked")
    elapsed = time.monotonic() - started
    assert 1 <= failures <= 2 + elapsed  # backoff 1 s, 2 s, 4 s...: never a tight loop


def test_close_from_another_thread_writes_the_pending_marks(
    make_scheduler, zk_client, zk_root
) -> None:
    scheduler = make_scheduler({"e": {"every": 0.5}})
    run_until(
        scheduler, lambda: (entry_state(zk_client, zk_root, "e") or {}).get("published") is False
    )

    def loop() -> None:
        while not scheduler._closed:
            time.sleep(min(scheduler.tick(), 0.05))

    ticking = threading.Thread(target=loop)
    ticking.start()
    scheduler.close()  # as EmbeddedBeat.stop() does, from another thread
    ticking.join(10)
    state = entry_state(zk_client, zk_root, "e")
    assert state["published"] is True
    assert scheduler.published == ids(
        zk_root, "e", *range(1, state["total_run_count"] + 1), client=zk_client
    )
