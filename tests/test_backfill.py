"""Backfill: ``beatleader entry backfill NAME --from T --to T``, on real beat and worker processes.

A runtime entry, hourly on 2 November only and done since 3 November 2026 (``end_at``: nothing of
its own falls due during a test), is backfilled from 00:00 to 19:00 UTC of 2 November: 20
scheduled times (a backfill ignores ``end_at``: it asks for the past). The worker runs the guard
(``TEST_DEDUP``); every assertion counts what it executed (``tests.app.record``) and what the
broker received (kombu's filesystem transport keeps every message):

* asked twice, the 20 runs are published twice with the same task ids and executed once each;
* with the leader SIGKILLed while it publishes (slowly, ``TEST_SLOW_PUBLISH``), its successor
  publishes the request again and each run is still executed once;
* bad input is one line, exit 2, nothing written; ``--dry-run`` lists the times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.schedules import crontab, schedule
from kazoo.client import KazooClient

from beatleader.entries.api import EntryStore
from beatleader.schedules.backfill import BackfillRequest, parse_request, times_in
from beatleader.schedules.checks import DefinitionError
from beatleader.schedules.types import ZonedCrontab
from beatleader.zk import layout
from tests.harness import contenders, read_executions, wait_for
from tests.runtime_support import definition, put_definition

FAULTS = "tests.app.FaultScheduler"
ENTRY = "hourly report"  # a space: the name is quoted in node names and folders
START = datetime(2026, 11, 2, 0, tzinfo=timezone.utc)
END = START + timedelta(hours=19)
RANGE = ["--from", START.isoformat(), "--to", END.isoformat()]
#: The runs of the range: 00:00 to 19:00 UTC of 2026-11-02.
EXPECTED = [layout.backfill_time(START + timedelta(hours=n)) for n in range(20)]


def cli(zk_server: Any, zk_root: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "beatleader.cli", *args]
    command += ["--zk-hosts", zk_server.hosts, "--path", zk_root]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _utc_app() -> Celery:
    app = Celery("backfill-test", set_as_current=False)
    app.conf.timezone = "UTC"
    return app


# -- the range and its times, no processes ----------------------------------------------------


def test_times_in_a_range_of_a_crontab_an_interval_and_a_dst_aware_crontab() -> None:
    app = _utc_app()
    hourly = times_in(crontab(minute=0, app=app), START, END, 1000)
    assert [layout.backfill_time(t) for t in hourly] == EXPECTED
    half = times_in(schedule(timedelta(minutes=30), app=app), START, START + timedelta(hours=1), 9)
    assert half == [START, START + timedelta(minutes=30), START + timedelta(hours=1)]
    # New York falls back on 2026-11-01: 01:00 happens twice (05:00 and 06:00 UTC), cron runs both
    zoned = ZonedCrontab("America/New_York", "0", "*", "*", "*", "*", app=app)
    fall = datetime(2026, 11, 1, 3, tzinfo=timezone.utc)
    found = times_in(zoned, fall, fall + timedelta(hours=5), 100)
    assert [t.hour for t in found] == [3, 4, 5, 6, 7, 8]
    # one more than the limit says "too many" without walking the whole range
    assert len(times_in(crontab(minute="*", app=app), START, END, 10)) == 11


def test_the_ids_depend_on_entry_and_time_only() -> None:
    moment = START + timedelta(hours=3)
    text = layout.backfill_time(moment)
    assert text == "2026-11-02T03:00:00.000+00:00"
    same = layout.backfill_time(moment.astimezone(timezone(timedelta(hours=5))))
    assert same == text  # the same instant in another offset: the same run
    task_id = layout.backfill_task_id("/r", ENTRY, text)
    assert task_id == layout.backfill_task_id("/r", ENTRY, text)
    assert task_id != layout.backfill_task_id("/r", "other", text)
    assert layout.backfill_ordinal(moment) == 3 * 3600 * 1000 + 1
    assert layout.backfill_folder_name(ENTRY, moment).endswith("\x00backfill\x002026-11-02")


@pytest.mark.parametrize(
    ("start", "end", "limit", "words"),
    [
        ("yesterday", END.isoformat(), 10, "--from 'yesterday' is not an ISO 8601 time"),
        (START.isoformat(), "2026-11-02T10:00:00", 10, "--to '2026-11-02T10:00:00' is not"),
        (END.isoformat(), START.isoformat(), 10, "is after --to"),
        (START.isoformat(), END.isoformat(), 0, "--max 0 must be a whole number of runs"),
    ],
)
def test_a_bad_range_is_one_line_naming_the_option(
    start: str, end: str, limit: int, words: str
) -> None:
    with pytest.raises(DefinitionError, match=words) as caught:
        parse_request(start, end, limit)
    assert "\n" not in str(caught.value)


def test_a_request_round_trips_and_hostile_data_is_refused() -> None:
    request = BackfillRequest(START, END, 20, "ops@host", "2026-12-07T00:00:00+00:00")
    assert BackfillRequest.decode(request.encode()) == request
    for data in (b"", b"\xff", b"[1]", b'{"from": 1, "to": 2}', b'{"from": "x"}'):
        with pytest.raises(DefinitionError):
            BackfillRequest.decode(data)


# -- the CLI, on the suite's ZooKeeper -------------------------------------------------------


def _define(client: KazooClient, root: str) -> None:
    # hourly, on 2 November only, done since 3 November 2026: nothing is due during a test
    found = definition({"crontab": "0 * 2 11 *"}, "bf")
    policy = {"beatleader": {"end_at": "2026-11-03T00:00:00+00:00"}}
    put_definition(client, root, ENTRY, replace(found, options=policy).validated())


def _backfills(client: KazooClient, root: str) -> list[str]:
    path = layout.backfills_path(root)
    return client.get_children(path) if client.exists(path) else []


def test_bad_input_is_one_line_exit_2_and_nothing_written(
    zk_server: Any, zk_client: KazooClient, zk_root: str
) -> None:
    _define(zk_client, zk_root)
    cases = [
        (["--from", END.isoformat(), "--to", START.isoformat()], "is after --to"),
        (["--from", "noon", "--to", END.isoformat()], "--from 'noon' is not an ISO 8601"),
        ([*RANGE, "--max", "ten"], "--max 'ten' is not an integer"),
        ([*RANGE, "--max", "19"], "--max 19: 'hourly report' has more runs than that"),
    ]
    for args, words in cases:
        result = cli(zk_server, zk_root, "entry", "backfill", ENTRY, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert words in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr
    missing = cli(zk_server, zk_root, "entry", "backfill", "nope", *RANGE)
    assert missing.returncode == 2 and "no such entry" in missing.stderr
    assert _backfills(zk_client, zk_root) == []

    dry = cli(zk_server, zk_root, "entry", "backfill", ENTRY, *RANGE, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert [datetime.fromisoformat(line) for line in lines[:-1]] == [
        START + timedelta(hours=n) for n in range(20)
    ]
    assert "20 run(s)" in lines[-1] and "nothing written" in lines[-1]
    assert _backfills(zk_client, zk_root) == []


# -- real beats and a guarded worker ---------------------------------------------------------


def _executed(log: Path) -> list[str]:
    return [e["id"] for e in read_executions(log) if e["name"] == "bf"]


def _published(broker_dir: Path) -> Counter[str]:
    return Counter(
        json.loads(path.read_text())["headers"]["id"]
        for folder in (broker_dir, broker_dir / "processed")
        for path in folder.glob("*.msg")
    )


def _ids(root: str) -> list[str]:
    return [layout.backfill_task_id(root, ENTRY, text) for text in EXPECTED]


def _leader_pid(client: KazooClient, root: str) -> int | None:
    queue = contenders(client, root)
    return queue[0]["pid"] if queue else None


def _leading(beats: Any, workers: Any, client: KazooClient, root: str, **beat: Any) -> Any:
    """The runtime entry defined, a guarded worker ready, a beat leading: (worker, beat)."""
    _define(client, root)
    worker = workers(env={"TEST_DEDUP": "1"})
    worker.wait_ready()
    leader = beats(**beat)
    wait_for(lambda: _leader_pid(client, root) == leader.pid, 30, message="the beat leads")
    return worker, leader


def _backfill(zk_server: Any, zk_root: str) -> None:
    result = cli(zk_server, zk_root, "entry", "backfill", ENTRY, *RANGE)
    assert result.returncode == 0, result.stderr
    assert "requested a backfill of 20 run(s)" in result.stdout


def _each_once(worker: Any, log: Path, ids: list[str], dropped: int) -> None:
    """The worker executed each of ``ids`` once, nothing else, and dropped ``dropped`` copies."""
    wait_for(lambda: len(_executed(log)) >= len(ids), 30, message="every run executed")
    worker.wait_for_log(r"dropped a delivery of .*already executed", 30, count=dropped)
    assert sorted(_executed(log)) == sorted(ids)


def test_a_backfill_asked_twice_runs_each_time_once(
    beats: Any,
    workers: Any,
    zk_server: Any,
    zk_client: KazooClient,
    zk_root: str,
    execution_log: Path,
    broker_dir: Path,
) -> None:
    worker, beat = _leading(beats, workers, zk_client, zk_root)
    _backfill(zk_server, zk_root)
    _backfill(zk_server, zk_root)
    beat.wait_for_log(r"backfill request \S+ done: 20 run\(s\)", 30, count=2)
    assert _backfills(zk_client, zk_root) == []
    ids = _ids(zk_root)
    _each_once(worker, execution_log, ids, 20)
    published = _published(broker_dir)
    assert [published[task_id] for task_id in ids] == [2] * 20  # asked twice: sent twice
    # the entry's own schedule did not move: no run of its own, its state untouched
    assert zk_client.exists(layout.entry_path(zk_root, ENTRY)) is None


@pytest.mark.slow
def test_a_backfill_survives_a_leader_kill_and_runs_each_time_once(
    beats: Any,
    workers: Any,
    zk_server: Any,
    zk_client: KazooClient,
    zk_root: str,
    execution_log: Path,
    broker_dir: Path,
) -> None:
    slow = {"env": {"TEST_SLOW_PUBLISH": "0.2"}, "scheduler": FAULTS}
    worker, doomed = _leading(beats, workers, zk_client, zk_root, **slow)
    successor = beats()
    wait_for(lambda: len(contenders(zk_client, zk_root)) == 2, 30, message="2 contenders")
    _backfill(zk_server, zk_root)
    doomed.wait_for_log(r"test: publishing slowly backfill", 30, count=8)
    listed = {e.name: e for e in EntryStore(zk_client, zk_root).list_entries()}
    assert listed[ENTRY].pending_backfills == 1  # what `entry list` and the dashboard show
    doomed.kill()
    wait_for(lambda: _leader_pid(zk_client, zk_root) == successor.pid, 30, message="takeover")
    successor.wait_for_log(r"backfill request \S+ done: 20 run\(s\)", 30)
    assert _backfills(zk_client, zk_root) == []
    ids = _ids(zk_root)
    published = _published(broker_dir)
    again = sum(published[task_id] == 2 for task_id in ids)
    assert again >= 7  # the ones the first leader sent before the kill, sent again
    _each_once(worker, execution_log, ids, again)


def test_catchup_walks_a_crontab_run_by_run() -> None:
    """The catch-up walk (``catchup: all``) of a crontab: each missed minute once, in order.

    With the schedule's clock read twice per step, ``now() + remaining_estimate(t)`` fell a few
    microseconds short of the next run, and the next step found that run again.
    """
    from celery import beat

    from beatleader.beat.catchup import missed_times
    from beatleader.schedules.policies import parse_policy

    app = _utc_app()
    now = datetime.now(timezone.utc).replace(second=30, microsecond=0)
    entry = beat.ScheduleEntry(
        "m", "t", now - timedelta(minutes=10), schedule=crontab(minute="*", app=app), app=app
    )
    times = missed_times(entry, parse_policy({"catchup": "all"}), now, 100)
    assert len(times) == 10 and len(set(times)) == 10
    assert [t.minute for t in times] == [(now - timedelta(minutes=9 - n)).minute for n in range(10)]
