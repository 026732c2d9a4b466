"""Dynamic entries (``beatleader/dynamic.py``): the seam runtime definitions and databases use.

A real ZooKeeper (the suite's); schedulers run in this process on kombu's ``memory://`` broker
and record what they published (``Recording`` of ``test_outbox.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest
from celery import beat
from celery.schedules import schedule

from tests.test_outbox import Recorder, Recording, elected, ids, run_until, schedulers

__all__ = ["schedulers"]  # a fixture


class Source:
    """What a shared definition store would hold, as celery entries."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.specs: dict[str, tuple[float, list[Any]]] = {}

    def entries(self, app: Any) -> dict[str, beat.ScheduleEntry]:
        with self.lock:
            return {name: entry(app, name, *spec) for name, spec in self.specs.items()}


def change(scheduler: Any, source: Source, name: str, every: float | None, *args: Any) -> None:
    """Change the source, then report it, as a watch on a shared store would."""
    with source.lock:
        if every is None:
            source.specs.pop(name, None)
        else:
            source.specs[name] = (every, list(args))
    scheduler.update_entries(
        {name: None if every is None else entry(scheduler.app, name, every, list(args))}
    )


def entry(app: Any, name: str, every: float, args: list[Any]) -> beat.ScheduleEntry:
    return beat.ScheduleEntry(
        name=name, task="tests.app.record", schedule=schedule(every), args=args, app=app
    )


class DynamicRecording(Recording):
    source: Source

    def dynamic_entries(self) -> Mapping[str, beat.ScheduleEntry]:
        return self.source.entries(self.app)


@pytest.fixture
def source() -> Source:
    return Source()


@pytest.fixture
def make_dynamic(schedulers, source) -> Any:
    def make(static: dict[str, Any], recorder: Recorder | None = None) -> DynamicRecording:
        scheduler = schedulers.make(DynamicRecording, static, recorder)
        scheduler.source = source
        return elected(scheduler)

    return make


def test_a_takeover_reads_the_dynamic_entries_and_continues_their_ordinals(
    make_dynamic, source, zk_root, zk_client
) -> None:
    source.specs["dyn"] = (0.2, ["a"])
    first = make_dynamic({"static": {"every": 3600}})
    run_until(first, lambda: len(first.published) >= 2)
    assert first.dynamic_names == {"dyn"}
    first.close()
    count = len(first.published)
    second = make_dynamic({"static": {"every": 3600}})
    run_until(second, lambda: len(second.published) >= 2)
    dyn = [
        t
        for t in first.published + second.published
        if t in ids(zk_root, "dyn", *range(1, 50), client=zk_client)
    ]
    assert dyn == ids(
        zk_root, "dyn", *range(1, len(dyn) + 1), client=zk_client
    )  # no ordinal restarted
    assert len(dyn) > count


def test_a_takeover_logs_one_line_for_its_dynamic_entries_not_one_per_entry(
    make_dynamic, source, caplog
) -> None:
    for number in range(20):
        source.specs[f"dyn-{number}"] = (3600.0, [number])
    caplog.set_level(logging.INFO, logger="beatleader")
    scheduler = make_dynamic({})
    run_until(scheduler, lambda: len(scheduler.dynamic_names) == 20)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert sum("20 dynamic entries read at takeover" in line for line in lines) == 1
    assert not [line for line in lines if "entry 'dyn-" in line]
    change(scheduler, source, "dyn-0", 3600.0, "new")  # a live change: one INFO line
    run_until(scheduler, lambda: scheduler.schedule["dyn-0"].args == ["new"])
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert [line for line in lines if "entry 'dyn-" in line] == [
        "beatleader: entry 'dyn-0' changed"
    ]


def test_changes_apply_while_leading_and_keep_the_run_state(
    make_dynamic, source, zk_root, zk_client
) -> None:
    scheduler = make_dynamic({})
    assert scheduler.dynamic_names == frozenset()
    change(scheduler, source, "dyn", 0.2, "v1")
    run_until(scheduler, lambda: len(scheduler.published) >= 2)
    change(scheduler, source, "dyn", 0.2, "v2")
    run_until(scheduler, lambda: scheduler.schedule["dyn"].args == ["v2"])
    before = len(scheduler.published)
    run_until(scheduler, lambda: len(scheduler.published) >= before + 2)
    assert scheduler.published == ids(
        zk_root, "dyn", *range(1, len(scheduler.published) + 1), client=zk_client
    )
    change(scheduler, source, "dyn", None)
    run_until(scheduler, lambda: "dyn" not in scheduler.schedule)
    stopped = len(scheduler.published)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # five intervals of the removed entry
        time.sleep(min(scheduler.tick(), 0.05))
    assert len(scheduler.published) <= stopped + 1  # at most the run already committed
    again = len(scheduler.published)
    change(scheduler, source, "dyn", 0.2, "v3")
    run_until(scheduler, lambda: len(scheduler.published) >= again + 1)
    # re-added: continues from its stored run state (one read), not from run 1
    assert scheduler.published == ids(
        zk_root, "dyn", *range(1, len(scheduler.published) + 1), client=zk_client
    )


def test_a_dynamic_entry_cannot_replace_a_static_one(make_dynamic, source) -> None:
    recorder = Recorder()
    scheduler = make_dynamic({"static": {"every": 3600, "args": ["static"]}}, recorder)
    change(scheduler, source, "static", 0.2, "dynamic")
    run_until(scheduler, lambda: any(kind == "entry-clash" for kind, _ in recorder.problems))
    assert scheduler.schedule["static"].args == ["static"]
    assert scheduler.dynamic_names == frozenset()
