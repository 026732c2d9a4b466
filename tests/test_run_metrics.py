"""Per-entry health: the leader's run metrics (``beatleader.runs.metrics``) and ``status --check
--entry`` (``beatleader.ops.health``).

With real ``celery beat`` and guarded ``celery worker`` processes on a real ZooKeeper: the counts
scraped from the leader's ``/metrics`` are compared with the markers the workers wrote (listed
between two scrapes, so that the scraped counts bracket them), never with figures written into
the test; hostile nodes in a run folder do not break a scrape.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from kazoo.client import KazooClient

from beatleader.entries.api import EntryStore
from beatleader.ops.health import entry_period, entry_problem
from beatleader.ops.model import Entry, Status
from beatleader.runs.history import History
from beatleader.runs.records import Outcome, RunRecord
from beatleader.schedules.describe import PlannedEntry
from beatleader.zk import layout
from tests.app import RECORD_TASK, make_app
from tests.cluster import every, schedule_env
from tests.dedup_tasks import FAIL_TASK, SLOW_TASK
from tests.harness import contenders, free_port, wait_for
from tests.test_metrics import Samples, scrape, try_scrape, value


def _start(beats: Any, zk_client: KazooClient, zk_root: str) -> tuple[Any, int, dict[str, str]]:
    """A leading beat serving metrics whose run collector has taken over (before any run)."""
    port = free_port()
    env = {**schedule_env(hourly=every(3600)), "BEATLEADER_METRICS_PORT": str(port)}
    beat = beats(env=env)
    wait_for(
        lambda: (queue := contenders(zk_client, zk_root)) and queue[0]["pid"] == beat.pid,
        30,
        message="the beat leads",
    )
    # the period of the static entry: the collector read the leader's loaded state
    wait_for(
        lambda: (
            (s := try_scrape(port))
            and value(s, "beatleader_entry_period_seconds", path=zk_root, entry="hourly") == 3600.0
        ),
        30,
        message="the leader exports the run metrics",
    )
    return beat, port, env


def _folder(client: KazooClient, root: str, name: str) -> str:
    state = layout.EntryState.decode(client.get(layout.entry_path(root, name))[0])
    assert state is not None
    return f"{layout.dedup_path(root)}/{layout.dedup_folder(name, state.incarnation)}"


def _markers(client: KazooClient, root: str, name: str) -> dict[str, int]:
    """Final markers of the entry by outcome, as the workers wrote them."""
    folder = _folder(client, root, name)
    found = {"succeeded": 0, "failed": 0}
    for child in client.get_children(folder):
        if child.startswith("d") and child[1:].isdigit():
            state = json.loads(client.get(f"{folder}/{child}")[0]).get("state")
            outcome = {"done": "succeeded", "failed": "failed"}.get(state)
            if outcome:
                found[outcome] += 1
    return found


def _runs(samples: Samples, root: str, name: str, outcome: str) -> float | None:
    return value(samples, "beatleader_runs_total", path=root, entry=name, outcome=outcome)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "beatleader.cli", *args, "-A", "tests.app"]
    return subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def test_the_leader_counts_each_finished_run_and_status_checks_an_entry(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, beat_env: dict[str, str]
) -> None:
    workers(env={"TEST_DEDUP": "1"}).wait_ready()
    beat, port, env = _start(beats, zk_client, zk_root)
    entries = EntryStore(zk_client, zk_root, make_app({**beat_env, **env}, set_as_current=False))
    entries.add("ok", task=RECORD_TASK, every="2s", args=["ok"])
    entries.add("bad", task=FAIL_TASK, every="2s", args=["bad"])
    labels = {"path": zk_root}

    def three_each() -> bool:
        samples = scrape(port)
        return (_runs(samples, zk_root, "ok", "succeeded") or 0) >= 3 and (
            _runs(samples, zk_root, "bad", "failed") or 0
        ) >= 3

    wait_for(three_each, 60, message="three counted runs of each entry")

    def bracketed() -> Samples | None:
        """A scrape whose counts equal the markers, listed between it and a second scrape."""
        before = scrape(port)
        written = {name: _markers(zk_client, zk_root, name) for name in ("ok", "bad")}
        after = scrape(port)
        for name, outcomes in written.items():
            for outcome, count in outcomes.items():
                if (
                    not _runs(before, zk_root, name, outcome)
                    == count
                    == _runs(after, zk_root, name, outcome)
                ):
                    return None
        return after

    samples = wait_for(bracketed, 30, message="scraped counts equal the markers")
    assert _runs(samples, zk_root, "bad", "succeeded") == 0.0  # exported at 0 for increase()
    assert _runs(samples, zk_root, "ok", "failed") == 0.0
    for name in ("ok", "bad"):
        counted = sum(_runs(samples, zk_root, name, o) or 0 for o in ("succeeded", "failed"))
        histogram = value(samples, "beatleader_run_duration_seconds_count", entry=name, **labels)
        assert histogram == counted
        total = value(samples, "beatleader_run_duration_seconds_sum", entry=name, **labels)
        assert total is not None and 0 <= total < 5 * counted
        assert value(samples, "beatleader_entry_running", entry=name, **labels) in (0.0, 1.0)
        assert value(samples, "beatleader_entry_period_seconds", entry=name, **labels) == 2.0
    success = value(samples, "beatleader_last_success_timestamp_seconds", entry="ok", **labels)
    assert success is not None and abs(time.time() - success) < 30
    never = value(samples, "beatleader_last_success_timestamp_seconds", entry="bad", **labels)
    assert never is None

    cli_env = {**beat_env, **env}
    failing = _cli(cli_env, "status", "--check", "--entry", "bad")
    assert failing.returncode == 1, failing.stderr
    assert failing.stdout == "" and len(failing.stderr.strip().splitlines()) == 1
    assert "entry bad: its last finished run" in failing.stderr
    assert "RuntimeError: bad fails on purpose" in failing.stderr
    healthy = _cli(cli_env, "status", "--check", "--entry", "ok")
    assert healthy.returncode == 0 and healthy.stdout == healthy.stderr == "", healthy.stderr
    for args, message in [
        (("status", "--check", "--entry", "nosuch"), "no such entry nosuch"),
        (("status", "--entry", "ok"), "--entry needs --check"),
    ]:
        refused = _cli(cli_env, *args)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and refused.stdout == ""

    # hostile nodes in a run folder (ordinals far above the real ones: no run of the entry's)
    folder = _folder(zk_client, zk_root, "ok")
    garbage = [
        b"\xff\xfe not json",
        b"[" * 50_000 + b"]" * 50_000,  # deeper than the JSON parser's recursion limit
        json.dumps({"state": ["done"], "duration": "long"}).encode(),
        json.dumps({"state": "done", "duration": 1e308 * 10}).encode(),  # Infinity
        b"",
    ]
    for index, data in enumerate(garbage):
        zk_client.create(f"{folder}/d{10**15 + index:020d}", data)
    zk_client.create(f"{folder}/dxyz", b"x")
    zk_client.create(f"{folder}/r{'9' * 40}", b"x")
    zk_client.create(f"{folder}/q1", b"\x00")
    before = _runs(scrape(port), zk_root, "ok", "succeeded") or 0
    wait_for(
        lambda: (_runs(scrape(port), zk_root, "ok", "succeeded") or 0) >= before + 2,
        30,
        message="runs still counted next to hostile nodes",
    )
    assert "Traceback" not in beat.log(), beat.log_tail(40)
    assert not beat.log_matches(r"WARNING.*metrics of"), beat.log_tail(40)


def test_entry_running_is_one_while_a_worker_runs_the_newest_run(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, beat_env: dict[str, str]
) -> None:
    workers(env={"TEST_DEDUP": "1"}).wait_ready()
    _beat, port, env = _start(beats, zk_client, zk_root)
    entries = EntryStore(zk_client, zk_root, make_app({**beat_env, **env}, set_as_current=False))
    entries.add("slow", task=SLOW_TASK, every="5s", args=["slow", 2])
    labels = {"path": zk_root, "entry": "slow"}

    def running() -> float | None:
        return value(scrape(port), "beatleader_entry_running", **labels)

    wait_for(lambda: running() == 1.0, 40, message="entry_running 1 during the run")
    wait_for(lambda: running() == 0.0, 20, message="entry_running 0 after it")
    samples = scrape(port)
    count = value(samples, "beatleader_run_duration_seconds_count", **labels)
    assert count is not None and count >= 1
    assert value(samples, "beatleader_runs_total", outcome="succeeded", **labels) == count
    assert value(samples, "beatleader_run_duration_seconds_bucket", le="1.0", **labels) == 0
    assert value(samples, "beatleader_run_duration_seconds_bucket", le="5.0", **labels) == count
    total = value(samples, "beatleader_run_duration_seconds_sum", **labels)
    assert total is not None and 2 * count <= total < 5 * count


# -- beatleader.ops.health on its own ------------------------------------------------------------


def _status(name: str, plan: PlannedEntry | None, recent: tuple[Any, ...] = ()) -> Status:
    state = layout.EntryState(None, 3, None, "test", recent=recent)
    return Status("/r", (), (Entry(name, state, plan=plan),))


def _history(*records: RunRecord, guarded: bool = True) -> History:
    return History("e", records, guarded=guarded)


def test_health_judges_the_last_finished_run_and_two_periods() -> None:
    now = 1_000_000.0
    interval = _status("e", PlannedEntry("e", every=60.0))
    ok = RunRecord(3, Outcome.SUCCEEDED, due_at=now - 70, finished_at=now - 69)
    failed = RunRecord(4, Outcome.FAILED, due_at=now - 10, finished_at=now - 9, error="E: x")
    running = RunRecord(5, Outcome.RUNNING, started_at=now - 1)
    assert entry_problem(interval, _history(ok), now) is None
    problem = entry_problem(interval, _history(running, failed, ok), now)
    assert problem == "entry e: its last finished run (run 4) failed: E: x"
    old = RunRecord(3, Outcome.SUCCEEDED, due_at=now - 130, finished_at=now - 121)
    assert "last succeeded 121 s ago, more than 2 periods of 60 s" in (
        entry_problem(interval, _history(old), now) or ""
    )
    sent = RunRecord(9, Outcome.SENT, due_at=now - 200)
    assert "no succeeded run" in (entry_problem(interval, _history(sent), now) or "")
    assert entry_problem(interval, _history(sent, guarded=False), now) is None  # no guard
    assert entry_problem(interval, _history(), now) is None  # never ran

    recent = ([1, now - 600, "sent"], [None, now - 400, "skipped:late"], [2, now - 300, "sent"])
    cron = _status("e", PlannedEntry("e", crontab="*/5 * * * *"), recent)
    assert entry_period(cron, "e") == 300.0
    assert entry_problem(cron, _history(old), now) is None  # 121 s < 2 * 300 s
    unknown = _status("e", PlannedEntry("e", crontab="0 0 * * *"), recent[:1])
    assert entry_period(unknown, "e") is None
    assert entry_problem(unknown, _history(old), now - 10_000) is None


def test_a_new_leader_counts_only_the_runs_that_finish_after_it_takes_over(
    beats: Any, workers: Any, zk_client: KazooClient, zk_root: str, beat_env: dict[str, str]
) -> None:
    workers(env={"TEST_DEDUP": "1"}).wait_ready()
    first, first_port, env = _start(beats, zk_client, zk_root)
    second_port = free_port()
    second = beats(env={**env, "BEATLEADER_METRICS_PORT": str(second_port)})
    wait_for(lambda: len(contenders(zk_client, zk_root)) == 2, 30, message="two contenders")
    entries = EntryStore(zk_client, zk_root, make_app({**beat_env, **env}, set_as_current=False))
    entries.add("ok", task=RECORD_TASK, every="1s", args=["ok"])
    wait_for(
        lambda: (_runs(scrape(first_port), zk_root, "ok", "succeeded") or 0) >= 3,
        40,
        message="the first leader counts three runs",
    )
    follower = scrape(second_port)
    assert _runs(follower, zk_root, "ok", "succeeded") is None  # exported by the leader only
    assert value(follower, "beatleader_entry_period_seconds", path=zk_root, entry="ok") is None

    first.kill()
    before = _markers(zk_client, zk_root, "ok")["succeeded"]  # at least those of the old leader
    wait_for(
        lambda: (_runs(scrape(second_port), zk_root, "ok", "succeeded") or 0) >= 2,
        40,
        message="the new leader counts runs",
    )
    counted = _runs(scrape(second_port), zk_root, "ok", "succeeded") or 0
    after = _markers(zk_client, zk_root, "ok")["succeeded"]
    assert before >= 3 and counted <= after - before, (before, counted, after)
    success = value(
        scrape(second_port), "beatleader_last_success_timestamp_seconds", path=zk_root, entry="ok"
    )
    assert success is not None and abs(time.time() - success) < 30
    assert "Traceback" not in second.log(), second.log_tail(40)
