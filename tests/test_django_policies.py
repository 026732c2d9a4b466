"""Schedule policies of django-celery-beat rows, with a real PostgreSQL, beat and worker.

The convention of docs/runtime-entries.md ("Schedule policies"): a row's ``headers``
``{"beatleader": {...}}`` carries what the model has no field for (``catchup``, ``jitter``,
``max_runs``, ...); ``start_time``, ``expires`` and ``one_off`` are the row's own. One
``celery beat -S beatleader.django.DatabaseScheduler`` and one worker (dedup guard) run every
row of the scenario at once; asserted on what the worker executed (by task id, i.e. by run
ordinal) and on the leader's records in ZooKeeper:

* ``max_runs: 3``: exactly 3 runs; ``catchup: all`` on a row 4.5 hourly runs late: exactly the
  4 missed runs, each once, oldest first, each with its scheduled time; ``jitter``: each run
  starts at its ``jitter.offset`` after its scheduled time;
* the published messages carry the row's other headers and never the ``beatleader`` key;
* a bad policy (``headers.beatleader.jitter: "soon"``) is one ERROR line and the row runs on
  the default policy; headers that are not JSON are one line and the row is skipped; the other
  rows run on;
* ``status`` and ``entry list`` show as done (no next due time, never overdue) the rows whose
  policy ended them: ``max_runs`` reached, a one-off after its run (disabled), a row past its
  ``expires`` (one that ran before, one that never ran).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from beatleader.entries.listing import read_entries
from beatleader.ops.health import entry_problem
from beatleader.ops.status import read_status
from beatleader.runs.history import read_history
from beatleader.schedules import jitter
from beatleader.zk import layout
from tests.django_support import add_row, row
from tests.harness import FilesystemBroker, entry_state, free_port, read_executions, wait_for
from tests.test_django_beat import (
    BOOT,
    EDIT_DELAY,
    SLACK,
    committed,
    each_run_once,
    executed,
    leading,
    ordinals,
    start_beats,
    stop_all,
)
from tests.test_metrics import try_scrape, value

JITTER = 1.5
HOUR = 3600


def _headers(policy: Any, **others: str) -> str:
    return json.dumps({"beatleader": policy, **others})


def test_row_policies_are_honoured_never_published_and_finished_rows_show_done(
    use_db, beats, workers, zk_client, zk_root, execution_log, broker_dir
) -> None:
    from django.utils import timezone

    url = use_db("pg")
    now = timezone.now()
    add_row("three", every=1, headers=_headers({"max_runs": 3}, **{"x-origin": "admin"}))
    late = now - timedelta(seconds=4.5 * HOUR)  # 4 hourly runs missed: -3.5, -2.5, -1.5, -0.5 h
    add_row("burst", every=HOUR, last_run_at=late, headers=_headers({"catchup": "all"}))
    add_row("jit", every=2, headers=_headers({"jitter": JITTER}))
    add_row("badpolicy", every=1, headers=_headers({"jitter": "soon"}))
    add_row("badheaders", every=1, headers='{"beatleader": {"jitter": 1')
    add_row("once", every=1, one_off=True)
    add_row("expired", every=1, expires=now - timedelta(seconds=1))
    workers(env={"TEST_DEDUP": "1"}).wait_ready()
    port = free_port()
    env = {"BEATLEADER_HISTORY_SIZE": "100", "BEATLEADER_METRICS_PORT": str(port)}
    started = start_beats(beats, url, count=1, **env)
    beat = leading(zk_client, zk_root, started)
    # a row that runs a few times, then expires (added now: the beat's start takes a while)
    expires = timezone.now() + timedelta(seconds=EDIT_DELAY + SLACK + 2)
    add_row("expiring", every=1, expires=expires)

    def runs(name: str) -> int:
        return committed(zk_client, zk_root, name)

    wait_for(lambda: runs("three") >= 3 and runs("burst") >= 4, BOOT, message="three, burst")
    wait_for(lambda: runs("jit") >= 4 and runs("badpolicy") >= 2, 30, message="jit, badpolicy")
    wait_for(lambda: not row("once").enabled, EDIT_DELAY + SLACK, message="once disabled")
    wait_for(lambda: timezone.now() > expires + timedelta(seconds=2), 30, message="expiry")

    def shown() -> dict[str, Any]:
        return {e.name: e for e in read_status(zk_client, zk_root).entries}

    finished = ("three", "once", "expired", "expiring")
    wait_for(lambda: all(shown()[n].done for n in finished), EDIT_DELAY + SLACK, message="done")

    def periods() -> dict[str, float | None] | None:
        samples = try_scrape(port)
        if samples is None:
            return None
        metric = "beatleader_entry_period_seconds"
        names = ("jit", "three", "expiring", "burst")
        return {name: value(samples, metric, path=zk_root, entry=name) for name in names}

    # the leader's run metrics: no period for a done row (an overdue alert cannot fire)
    exported = wait_for(
        lambda: (found := periods()) and found["jit"] == 2.0 and found, 30, message="metrics"
    )
    assert exported == {"jit": 2.0, "three": None, "expiring": None, "burst": float(HOUR)}
    status = read_status(zk_client, zk_root)  # while the beat runs: the rows are described
    listed = {e.name: e for e in read_entries(zk_client, zk_root, {})}
    stop_all(started)

    # honoured: exact counts, each run executed once
    assert each_run_once(zk_client, zk_root, execution_log, "three") == 3
    assert executed(execution_log, "three") == 3
    assert each_run_once(zk_client, zk_root, execution_log, "burst") == 4
    burst = entry_state(zk_client, zk_root, "burst") or {}
    scheduled = [at for _n, at, _s in burst["recent"]]  # the leader's records: epoch seconds
    expected = [late.timestamp() + k * HOUR for k in (1, 2, 3, 4)]
    assert len(scheduled) == 4
    assert all(abs(t - e) < 0.002 for t, e in zip(scheduled, expected, strict=True)), scheduled
    assert each_run_once(zk_client, zk_root, execution_log, "once") == 1
    assert (row("once").enabled, row("once").total_run_count) == (False, 1)
    assert (
        executed(execution_log, "expired") == 0
        and entry_state(zk_client, zk_root, "expired") is None
    )
    # The row's expires travels on each message, as django-celery-beat sends it: a run sent just
    # before it and taken by the worker after it is discarded there (seen under load). Every
    # run executed once, up to the last one or two; by now (expires + 2 s) no more can run.
    total = committed(zk_client, zk_root, "expiring")
    life = (entry_state(zk_client, zk_root, "expiring") or {}).get("incarnation")
    seen = ordinals(read_executions(execution_log), zk_root, "expiring", total + 50, life)
    upto = max(seen, default=0)
    assert upto >= max(total - 2, 1) and seen == Counter(range(1, upto + 1)), (total, seen)
    last = datetime.fromisoformat(
        (entry_state(zk_client, zk_root, "expiring") or {})["last_run_at"]
    )
    assert last <= expires < last + timedelta(seconds=2)  # it ran up to its expiry, not after
    each_run_once(zk_client, zk_root, execution_log, "badpolicy")
    assert executed(execution_log, "badheaders") == 0

    # jitter: each run starts its own offset after its scheduled time (none of them is ~0)
    state = entry_state(zk_client, zk_root, "jit") or {}
    times = {n: at for n, at, _s in state["recent"] if n is not None}
    ids = {layout.run_task_id(zk_root, "jit", n, state["incarnation"]): n for n in times}
    starts = {ids[e["id"]]: e["ts"] for e in read_executions(execution_log) if e["id"] in ids}
    assert sorted(starts) == list(range(1, state["total_run_count"] + 1))
    for ordinal, ts in starts.items():
        offset = jitter.offset("jit", ordinal, JITTER)
        assert offset - 0.05 <= ts - times[ordinal] <= offset + 1.0, (ordinal, ts, offset)
    assert max(jitter.offset("jit", n, JITTER) for n in starts) > 1.0

    # never published: the other headers are, the beatleader key is not
    broker = FilesystemBroker(broker_dir)
    for name in ("three", "burst", "jit", "badpolicy"):
        messages = broker.for_entry(name)
        assert messages and all("beatleader" not in m.headers for m in messages), name
    assert all(m.headers["x-origin"] == "admin" for m in broker.for_entry("three"))

    # bad input: one line each, the beat went on
    assert len(beat.log_matches(r"entry 'badpolicy': headers\.beatleader\.jitter 'soon'")) == 1
    assert len(beat.log_matches(r"periodic task 'badheaders' .*headers are not JSON")) == 1

    # done, not overdue: status and entry list
    entries = {e.name: e for e in status.entries}
    for name in finished:
        assert entries[name].done and entries[name].next_due is None, name
        assert listed[name].state == "done" and listed[name].next_due is None, name
        history = read_history(zk_client, zk_root, name)
        assert entry_problem(status, history, now=last.timestamp() + HOUR) is None, name
    for name in ("jit", "badpolicy", "burst"):
        assert not entries[name].done and listed[name].state == "enabled", name
    assert "once" in (status.scheduled_names or ())  # finished, not an orphan
    assert not any("no running instance schedules" in w for w in status.warnings)


def test_a_row_is_described_with_its_own_fields_as_policy(use_db) -> None:
    """``start_time``/``expires``/``one_off`` become ``start_at``/``end_at``/``max_runs``, merged
    with the ``headers`` policy (the later start, the earlier end, the fewer runs)."""
    from django.utils import timezone

    from beatleader.django.describe import describe_row
    from beatleader.django.rows import finished_rows, read_rows
    from tests.app import make_app

    use_db("default")
    now = timezone.now().replace(microsecond=0)
    start, end = now + timedelta(hours=1), now + timedelta(hours=2)
    policy = {"start_at": now.isoformat(), "end_at": (end + timedelta(hours=1)).isoformat()}
    add_row("window", every=1, start_time=start, expires=end, headers=_headers(policy))
    add_row("once", every=1, one_off=True, total_run_count=4)
    add_row("capped", every=1, one_off=True, headers=_headers({"max_runs": 5, "jitter": 2}))
    add_row("crossed", every=1, start_time=end, expires=start, headers=_headers({"jitter": 2}))
    add_row("ran", every=1, one_off=True, enabled=False, total_run_count=2)
    add_row("off", every=1, enabled=False, total_run_count=2)  # disabled, not a one-off
    add_row("never", every=1, one_off=True, enabled=False)
    add_row("bare", every=1, headers="[1]")
    add_row("plain", every=1)
    gone = now - timedelta(hours=1)
    add_row("gone", every=1, expires=gone)
    app = make_app({}, set_as_current=False)
    entries, bad = read_rows(app, frozenset())
    policies = {name: describe_row(e).policy for name, e in entries.items()}
    assert policies["window"] == {"start_at": start.isoformat(), "end_at": end.isoformat()}
    assert policies["once"] == {"max_runs": 5}  # armed at its count: one more run
    assert policies["capped"] == {"jitter": 2.0, "max_runs": 1}
    assert policies["crossed"] == {"jitter": 2.0}  # no valid window: the headers' policy alone
    assert policies["plain"] is None
    # past its expires, a row that ran is limited to its runs (a run scheduled before expires
    # and never sent is not due); one that did not run is done by end_at alone
    assert describe_row(entries["gone"], 3, now).policy == {
        "end_at": gone.isoformat(),
        "max_runs": 3,
    }
    assert describe_row(entries["gone"], 0, now).policy == {"end_at": gone.isoformat()}
    assert describe_row(entries["window"], 3, now).policy == policies["window"]
    assert bad == {"bare": 'its headers are not a JSON object like {"x-origin": "admin"}'}
    done = finished_rows(app, frozenset())
    assert set(done) == {"ran"}
    assert describe_row(done["ran"]).policy == {"max_runs": 2}
    assert done["ran"].finished
    add_row("later", every=1, one_off=True, enabled=False, total_run_count=1)
    assert set(finished_rows(app, frozenset(), limit=1)) == {"later"}  # the last changed
    assert set(finished_rows(app, frozenset({"later"}))) == {"ran"}  # a static name: not a row
