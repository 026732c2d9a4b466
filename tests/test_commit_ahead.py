"""The commit lead: a run is committed before its due time and published at it (docs/design.md).

In-process schedulers on the suite's real ZooKeeper, behind a :class:`ZkProxy` that holds every
transaction's reply ``COMMIT_S`` seconds (a slow disk or a remote quorum), ticked as celery's
beat service ticks them (sleep what ``tick`` returns). Times are read on the scheduler's own
clock (ZooKeeper's server time), so "never early" is exact. The same test with the lead off
shows what the lead removes: every run late by the commit's latency.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from beatleader.testing.proxy import ZkProxy
from tests.harness import wait_for
from tests.test_outbox import Recorder, Recording, Schedulers, ids

#: Seconds every commit's reply is held by the proxy.
COMMIT_S = 0.15
#: The first runs are not measured: the lead learns the commit latency from them.
WARMUP_RUNS = 3


class Timed(Recording):
    """Records each published run: (ordinal, last_run_at epoch, ZooKeeper time at publication)."""

    runs: list[tuple[int, float, float]]

    def publish_run(self, entry: Any, ordinal: int, incarnation: str | None = None) -> str:
        task_id = super().publish_run(entry, ordinal, incarnation)
        self.runs.append((ordinal, entry.last_run_at.timestamp(), self._server_epoch()))
        return task_id


class Ticker:
    """Ticks a scheduler in a thread as celery's beat service does, until stopped."""

    def __init__(self, scheduler: Recording) -> None:
        self.scheduler = scheduler
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            delay = self.scheduler.tick()
            if delay > 0:
                self._stop.wait(delay)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def proxy(zk_server) -> Iterator[ZkProxy]:
    with ZkProxy(zk_server.hosts) as made:
        made.multi_reply_delay = COMMIT_S
        yield made


@pytest.fixture
def slow_schedulers(proxy, zk_root) -> Iterator[Schedulers]:
    made = Schedulers(proxy.hosts, zk_root, session_timeout=4.0)
    yield made
    made.close()


def lateness(runs: list[tuple[int, float, float]]) -> list[float]:
    """Seconds from each run's due time (the previous run's ``last_run_at`` + 1 s) to its send."""
    return [
        published - (previous_at + 1.0)
        for (_, previous_at, _), (_, _, published) in itertools.pairwise(runs)
    ]


def run_timed(schedulers: Schedulers, commit_ahead: bool, count: int) -> Timed:
    cls = type("TimedLead" if commit_ahead else "TimedNoLead", (Timed,), {})
    cls.commit_ahead = commit_ahead
    scheduler = schedulers.make(cls, {"e": {"every": 1}}, Recorder())
    scheduler.runs = []
    ticker = Ticker(scheduler)
    try:
        wait_for(lambda: len(scheduler.runs) >= count, 30, message=f"{count} runs")
    finally:
        ticker.stop()
    return scheduler


def test_runs_are_committed_ahead_and_published_at_their_due_time(slow_schedulers) -> None:
    scheduler = run_timed(slow_schedulers, True, WARMUP_RUNS + 6)
    runs = scheduler.runs[WARMUP_RUNS - 1 :]
    late = lateness(runs)
    assert min(late) >= -0.001, late  # never before the due time (ZooKeeper's clock)
    assert statistics.median(late) < COMMIT_S / 2, late  # the commit's latency is not in it
    for (_, previous_at, _), (_, at, _) in itertools.pairwise(runs):
        assert at - previous_at == pytest.approx(1.0, abs=0.002)  # last_run_at: the due time
    assert COMMIT_S <= scheduler.lead.seconds <= scheduler.commit_lead_max
    assert [ordinal for ordinal, _, _ in scheduler.runs] == list(range(1, len(scheduler.runs) + 1))


def test_without_the_lead_every_run_waits_for_its_commit(slow_schedulers) -> None:
    scheduler = run_timed(slow_schedulers, False, WARMUP_RUNS + 4)
    late = lateness(scheduler.runs[WARMUP_RUNS - 1 :])
    assert statistics.median(late) >= COMMIT_S * 0.9, late


class LosesItsFence(Timed):
    """Once, after a run committed ahead and before its due time, its contender node is deleted
    (as an expired session's is): the fence is gone before the run may be published."""

    zk: Any = None
    lost: int | None = None

    def _publish_outbox(self) -> None:
        now = time.monotonic()
        waiting = [p for p in self.publisher.outbox.runs() if p.due_at > now]
        if self.lost is None and waiting and len(self.runs) >= WARMUP_RUNS:
            self.lost = waiting[0].ordinal
            node = self._election.node  # type: ignore[union-attr]
            self.zk.delete(node)
            wait_for(lambda: not self.is_leader, 10, message="stepped down")
        super()._publish_outbox()


def test_a_leader_that_loses_its_fence_before_the_due_time_leaves_the_run_to_its_successor(
    slow_schedulers, zk_client, zk_root
) -> None:
    first = slow_schedulers.make(LosesItsFence, {"e": {"every": 1}}, Recorder())
    first.runs, first.zk = [], zk_client
    tickers = [Ticker(first)]
    try:
        wait_for(lambda: first.is_leader, 20, message="the first leads")
        second = slow_schedulers.make(Timed, {"e": {"every": 1}}, Recorder())
        second.runs = []
        tickers.append(Ticker(second))
        wait_for(lambda: first.lost is not None, 30, message="the fence lost after a commit")
        lost = first.lost
        assert lost is not None
        wait_for(lambda: any(o == lost for o, _, _ in second.runs), 30, message="successor")
    finally:
        for ticker in tickers:
            ticker.stop()
    assert lost not in [o for o, _, _ in first.runs]  # committed, never published by the first
    published = first.published + second.published
    (task_id,) = ids(zk_root, "e", lost, client=zk_client)
    assert published.count(task_id) == 1  # the successor published the committed run, once
    ordinals = sorted({o for o, _, _ in first.runs + second.runs})
    assert ordinals == list(range(1, max(ordinals) + 1))  # no run lost, none doubled
