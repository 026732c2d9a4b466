"""The overlap gate's cost and decisions (``beatleader/beat/overlap.py``), on a recording client.

A narrow unit test: the client only records which ``exists`` it was asked and answers from a set
of existing paths. The behaviour on real processes is ``tests/test_overlap.py``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from beatleader.beat.overlap import OverlapGate
from beatleader.beat.planning import Run
from beatleader.beat.state import StoredState
from beatleader.zk import layout

ROOT = "/app"


class Recorder:
    def __init__(self, existing: set[str]) -> None:
        self.existing, self.asked = existing, []

    def exists_async(self, path: str) -> Any:
        self.asked.append(path)
        found = object() if path in self.existing else None
        return SimpleNamespace(get=lambda timeout=None: found)


class Entry:
    """What the gate reads of a celery entry (a plain class: ``replaced`` copies its fields)."""

    def __init__(self, name: str, options: dict[str, Any], total_run_count: int) -> None:
        self.name, self.options, self.total_run_count = name, options, total_run_count


def entry(name: str, overlap: str | None, count: int = 5) -> Any:
    options = {"beatleader": {"overlap": overlap}} if overlap else {}
    return Entry(name, options, count + 1)


def stored(count: int = 5) -> StoredState:
    state = layout.EntryState("2026-01-01T00:00:00+00:00", count, None, "t", incarnation="a" * 16)
    return StoredState(state, 1)


def claim(name: str, ordinal: int = 5) -> str:
    return f"{layout.dedup_path(ROOT)}/{layout.dedup_folder(name, 'a' * 16)}/r{ordinal:020d}"


def gate_of(reports: list[str]) -> OverlapGate:
    return OverlapGate(ROOT, lambda key, kind, detail: reports.append(detail))


def test_allow_entries_cost_no_request_and_a_skip_entry_one() -> None:
    client = Recorder(set())
    runs = [Run(entry(f"a{n}", None), 1.0, True) for n in range(100)]
    runs += [Run(entry("s", "skip"), 1.0, True), Run(entry("b", "buffer-one"), 1.0, True)]
    states = {run.entry.name: stored() for run in runs}
    kept, held = gate_of([]).gate(client, runs, states)
    assert kept == runs and held == []
    assert sorted(client.asked) == sorted([claim("s"), claim("b")])  # one per watched run


def test_a_blocked_run_is_skipped_or_held_and_released_when_its_claim_ends() -> None:
    client = Recorder({claim("s"), claim("b")})
    gate = gate_of([])
    runs = [Run(entry("s", "skip"), 1.0, True), Run(entry("b", "buffer-one"), 1.0, True)]
    kept, held = gate.gate(client, runs, {"s": stored(), "b": stored()})
    assert [(r.entry.name, r.send, r.reason) for r in kept] == [("s", False, "overlap")]
    assert kept[0].entry.total_run_count == 5  # a skip keeps the run count
    assert [r.entry.name for r in held] == ["b"]
    again, _ = gate.gate(client, [Run(entry("b", "buffer-one"), 1.0, True)], {"b": stored()})
    assert [(r.send, r.reason) for r in again] == [(False, "overlap")]  # one is held already
    assert gate.released(client, set()) == []  # still running
    client.existing.clear()
    gate._next_poll = 0.0  # the poll interval passed
    assert [name for name, _ in gate.released(client, set())] == ["b"]
    assert gate.next_check() is None


def test_a_run_now_request_a_first_run_and_a_failed_read_block_nothing() -> None:
    class Failing(Recorder):
        def exists_async(self, path: str) -> Any:
            self.asked.append(path)

            def fail(timeout: float | None = None) -> None:
                raise ConnectionError("lost")

            return SimpleNamespace(get=fail)

    client = Failing(set())
    runs = [
        Run(entry("r", "skip"), 1.0, True, request="/app/requests/r__run__1"),
        Run(entry("new", "skip", count=0), 1.0, True),
        Run(entry("lost", "skip"), 1.0, True),
    ]
    kept, held = gate_of([]).gate(client, runs, {"new": stored(0), "lost": stored()})
    assert kept == runs and held == [] and client.asked == [claim("lost")]


def test_a_bad_policy_is_reported_and_runs_as_allow() -> None:
    reports: list[str] = []
    client = Recorder(set())
    runs = [Run(entry("typo", "skp"), 1.0, True)]
    kept, _ = gate_of(reports).gate(client, runs, {"typo": stored()})
    assert kept == runs and client.asked == []
    assert reports and "overlap 'skp' is not one of" in reports[0]
