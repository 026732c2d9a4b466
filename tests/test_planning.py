"""Pure decisions of the leader (``beatleader.planning``) and entry-state parsing: no ZooKeeper."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from beatleader.beat.planning import (
    Backoff,
    CommitLead,
    Marks,
    Outbox,
    Pending,
    ServerClock,
    continuation,
)
from beatleader.beat.state import StoredState
from beatleader.zk import layout
from beatleader.zk.layout import EntryState

T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()


def test_backoff_doubles_up_to_its_maximum_and_resets() -> None:
    backoff = Backoff(0.5, 4.0)
    delays = [backoff.failed("k", 100.0) for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert not backoff.ready("k", 103.9) and backoff.ready("k", 104.0)
    backoff.succeeded("k")
    assert backoff.ready("k", 0.0) and backoff.failures("k") == 0
    assert backoff.failed("k", 0.0) == 0.5


def outbox(window: float = 1.0) -> Outbox:
    return Outbox(window, Backoff(0.25, 5.0))


def test_outbox_publishes_only_within_the_window_after_a_commit() -> None:
    box = outbox()
    box.add(Pending("a", 3, object(), committed_at=10.0))
    box.add(Pending("b", 7, object()))  # inherited from another leader: never committed by us
    assert [p.name for p in box.publishable(10.9)] == ["a"]
    assert [p.name for p in box.to_renew(10.9)] == ["b"]
    assert box.publishable(11.1) == [] and {p.name for p in box.to_renew(11.1)} == {"a", "b"}
    box.renewed("b", 11.1)
    assert [p.name for p in box.publishable(11.2)] == ["b"]


def test_outbox_backs_off_a_failed_publish_and_forgets_a_published_run() -> None:
    box = outbox()
    box.add(Pending("a", 1, object(), committed_at=0.0))
    assert box.failed("a", 0.0) == 0.25
    assert box.attempts_due(0.1) == [] and box.next_attempt(0.1) == pytest.approx(0.15)
    assert [p.ordinal for p in box.attempts_due(0.3)] == [1]
    assert box.published("a") is not None and "a" not in box and box.next_attempt(1.0) is None


def test_a_run_committed_ahead_is_publishable_at_its_due_time_not_before() -> None:
    box = outbox()
    box.add(Pending("a", 1, object(), committed_at=10.0, due_at=10.2))
    assert box.publishable(10.1) == [] and box.to_renew(10.1) == []
    assert box.next_attempt(10.1) == pytest.approx(0.1)
    assert [p.name for p in box.publishable(10.2)] == ["a"]
    box.add(Pending("b", 1, object(), due_at=10.5))  # inherited: renewed now, published at 10.5
    assert [p.name for p in box.to_renew(10.1)] == ["b"] and box.next_attempt(10.1) == 0.0


def test_the_commit_lead_follows_the_commits_p99_within_its_bounds() -> None:
    lead = CommitLead(ceiling=0.25, initial=0.05)
    assert lead.seconds == 0.05  # nothing measured yet
    for _ in range(99):
        lead.observe(0.004)
    lead.observe(0.1)  # one slow commit in 100: the p99 is the 100th slowest
    assert lead.seconds == pytest.approx(0.1 * 1.25)
    for _ in range(200):  # the slow one has left the window of the latest 200
        lead.observe(0.004)
    assert lead.seconds == pytest.approx(0.005)
    lead.observe(10.0)
    lead.observe(10.0)
    lead.observe(10.0)
    assert lead.seconds == 0.25  # never past its ceiling
    tiny = CommitLead(ceiling=0.25, initial=0.0)
    assert tiny.seconds == 0.001  # never under its floor


def test_marks_ripen_after_their_delay() -> None:
    marks = Marks(1.5)
    marks.add("a", 4, 10.0)
    marks.add("b", 2, 11.0)
    assert marks.ripe(11.4) == [] and marks.next_ripe(11.4) == pytest.approx(0.1)
    assert marks.ripe(12.0) == [("a", 4)]
    marks.discard("a")
    assert marks.items() == [("b", 2)] and marks.get("b") == 2 and len(marks) == 1


def test_server_clock_takes_the_send_time_and_ignores_slow_samples() -> None:
    clock = ServerClock(max_round_trip=0.5)
    assert clock.sample(100.0, 100.2, 125.1) and clock.offset == pytest.approx(25.1)
    assert not clock.sample(100.0, 101.0, 90.0) and clock.offset == pytest.approx(25.1)
    assert ServerClock().max_round_trip <= 0.05  # the default: at most 50 ms of error


def test_server_clock_keeps_its_offset_while_samples_agree_within_their_error() -> None:
    clock = ServerClock(max_round_trip=0.5)
    clock.sample(100.0, 100.002, 125.001)
    assert clock.offset == pytest.approx(25.001)
    # the truth lies in (225.035 - 200.04, 225.036 - 200.0]: 25.001 is in it
    assert clock.sample(200.0, 200.04, 225.035) and clock.offset == pytest.approx(25.001)
    # (325.101 - 300.002, 325.102 - 300.0] does not hold 25.001: the new sample is taken
    assert clock.sample(300.0, 300.002, 325.101) and clock.offset == pytest.approx(25.101)


def stored(state: EntryState | None, version: int = 5, problem: str = "") -> StoredState:
    return StoredState(state, version, T0, problem or ("" if state else "garbage"))


def iso(offset: float) -> str:
    return datetime.fromtimestamp(T0 + offset, timezone.utc).isoformat()


def test_continuation_of_a_readable_state() -> None:
    found = continuation(stored(EntryState(iso(-0.01), 9, "x", "a", published=False)), 0, 2.0)
    assert (found.total_run_count, found.published, found.problem) == (9, False, "")
    assert found.last_run_at == datetime.fromtimestamp(T0 - 0.01, timezone.utc)


def test_continuation_of_unreadable_data_continues_after_a_provable_floor() -> None:
    found = continuation(stored(None, version=12), 0, 2.0)
    assert found.total_run_count == 13 and found.published and "unreadable" in found.problem
    assert found.last_run_at == datetime.fromtimestamp(T0, timezone.utc)  # the last write
    assert continuation(stored(None, version=12), 40, 2.0).total_run_count == 40


def test_continuation_never_goes_back_below_what_this_process_saw() -> None:
    found = continuation(stored(EntryState(iso(-5), 2, None, "a")), 30, 2.0)
    assert found.total_run_count == 30 and found.published and "went back" in found.problem


def test_continuation_does_not_obey_a_time_in_the_future() -> None:
    found = continuation(stored(EntryState(iso(3600 * 24 * 365), 4, None, "a")), 0, 2.0)
    assert found.last_run_at == datetime.fromtimestamp(T0, timezone.utc)
    assert "future" in found.problem and found.total_run_count == 4
    near = continuation(stored(EntryState(iso(1.0), 4, None, "a")), 0, 2.0)
    assert near.problem == ""  # within the tolerance of the clock estimate


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "not a JSON object"),
        (b"{", "not JSON"),
        (b"[" * 50_000, "not JSON"),
        (b"{}", "no total_run_count"),
        (b'{"total_run_count": 1.5}', "total_run_count"),
        (b'{"total_run_count": false}', "total_run_count"),
        (b'{"total_run_count": 1, "skipped_count": -2}', "skipped_count"),
        (b'{"total_run_count": 1, "written_by": 3}', "written_by"),
        (b'{"total_run_count": 1, "last_run_at": 17}', "last_run_at"),
        (b'{"total_run_count": 1, "published": 1}', "published"),
        (b'{"total_run_count": 1, "incarnation": 7}', "incarnation"),
        (b'{"total_run_count": 1, "incarnation": "../x"}', "incarnation"),
        (b'{"total_run_count": 1, "incarnation": ""}', "incarnation"),
    ],
)
def test_entry_state_parse_names_what_is_wrong(data: bytes, why: str) -> None:
    state, problem = EntryState.parse(data)
    assert state is None and why in problem


def test_entry_state_round_trips_and_old_data_reads_as_published() -> None:
    state = EntryState(iso(0), 3, "id", "me", 1, published=False)
    assert EntryState.parse(state.encode()) == (state, "")
    born = EntryState(iso(0), 3, "id", "me", incarnation=layout.new_incarnation())
    assert EntryState.parse(born.encode()) == (born, "")
    assert layout.run_task_id("/r", "e", 3, born.incarnation) != layout.run_task_id("/r", "e", 3)
    old = b'{"last_run_at": null, "total_run_count": 2, "last_task_id": null, "written_by": "x"}'
    parsed, _ = EntryState.parse(old)
    assert parsed is not None and parsed.published is True
