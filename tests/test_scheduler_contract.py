"""celery's Scheduler contract, kept by ``beatleader.Scheduler`` (docs/compatibility.md).

Every test runs on the suite's real ZooKeeper. The schedule classes are written as celery users
write them (``tests/user_schedules.py``): each works with celery's own scheduler, so none may stop
beatleader's beat, on this instance or on the next leader. The in-process tests tick a scheduler
on kombu's ``memory://`` broker; the first test runs three real ``celery beat`` processes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import beat
from celery.schedules import schedule

from beatleader.config import Settings
from beatleader.observe import Observers
from tests.app import make_app
from tests.cluster import ENTRY, every, schedule_env, start_instances
from tests.harness import FilesystemBroker, contenders, wait_for
from tests.test_outbox import Recorder, Recording, elected, run_until
from tests.user_schedules import Gate, ReturnForm, Zoned


def custom(name: str, *args: Any) -> dict[str, Any]:
    return {"custom": name, "custom_args": list(args)}


#: A schedule of every user class that broke beatleader's beat, beside one plain entry.
HOSTILE = {
    ENTRY: every(1),
    "closed gate": custom("Gate", False),
    "keyword only": custom("KeywordOnly", 1),
    "none delay": custom("ReturnForm", "none-delay", 1),
    "bad repr": custom("BadRepr", 1),
    "bad remaining": custom("BadRemaining", 1),
    "three values": custom("Odd", "three"),
    "text answer": custom("Odd", "text"),
}


class Factory:
    """In-process schedulers on the app of a ``TEST_SCHEDULE``, closed at the test's end."""

    def __init__(self, hosts: str, root: str) -> None:
        self.hosts, self.root = hosts, root
        self.made: list[Recording] = []

    def make(
        self,
        schedule: dict[str, Any],
        recorder: Recorder | None = None,
        max_interval: float = 1.0,
        lazy: bool = False,
    ) -> Recording:
        app = make_app(
            {"TEST_SCHEDULE": json.dumps(schedule), "TEST_MAX_INTERVAL": str(max_interval)},
            set_as_current=False,
        )
        settings = Settings.from_app(app, zk_hosts=self.hosts, path=self.root, session_timeout=2)
        observers = Observers(recorder or Recorder())
        made = Recording(
            app, beatleader_settings=settings, beatleader_observers=observers, lazy=lazy
        )
        made.published = []
        self.made.append(made)
        return made

    def close(self) -> None:
        for made in self.made:
            made.close()


@pytest.fixture
def factory(zk_server, zk_root) -> Iterator[Factory]:
    made = Factory(zk_server.hosts, zk_root)
    yield made
    made.close()


def tick_for(scheduler: Recording, seconds: float) -> None:
    """Tick ``scheduler`` as celery's Service does, for ``seconds``; no tick may raise."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(max(0.0, min(scheduler.tick(), 0.05, deadline - time.monotonic())))


# -- 1. no user schedule can stop the beat ------------------------------------------------------


def test_user_schedules_that_stopped_every_instance_leave_three_real_beats_running(
    beats, zk_client, zk_root, broker_dir
) -> None:
    """The issue's worst bug: celery's Service does not catch what leaves ``tick()``.

    Before the fix, ``copy.copy`` of ``KeywordOnly`` raised TypeError in the leader's tick, beat
    exited, the next leader loaded the same schedule and exited too; ``BadRepr`` stopped every
    instance at start (the fingerprint), ``(False, None)`` in the tick.
    """
    broker = FilesystemBroker(broker_dir)
    env = {**schedule_env(**HOSTILE), "TEST_MAX_INTERVAL": "1"}
    processes = start_instances(beats, zk_client, zk_root, 3, env)
    first = contenders(zk_client, zk_root)[0]["pid"]
    wait_for(lambda: broker.count(ENTRY) >= 6, 30, message="6 sends of the plain entry")
    wait_for(lambda: broker.count("keyword only") >= 3, 10, message="3 sends of 'keyword only'")
    wait_for(lambda: broker.count("none delay") >= 2, 10, message="2 sends of 'none delay'")
    wait_for(lambda: broker.count("bad repr") >= 3, 10, message="3 sends of 'bad repr'")
    wait_for(lambda: broker.count("bad remaining") >= 3, 10, message="3 sends of 'bad remaining'")

    assert all(p.alive for p in processes), [p.log_tail(30) for p in processes if not p.alive]
    assert contenders(zk_client, zk_root)[0]["pid"] == first, "leadership moved"
    assert broker.count("closed gate") == 0, "a closed gate was rebuilt open and sent"
    assert broker.count("three values") == 0 and broker.count("text answer") == 0
    leader = next(p for p in processes if p.pid == first)
    log = leader.log()
    for name in ("three values", "text answer"):
        assert log.count(f"cannot tell when {name!r} is due") == 1, log[-3000:]
    assert "Traceback" not in "".join(p.log() for p in processes)


def test_a_closed_gate_is_not_rebuilt_open(factory) -> None:
    """``copy.copy`` rebuilt it from ``schedule.__reduce__``: a 0 s interval, always due."""
    scheduler = elected(factory.make({ENTRY: every(1), "gate": custom("Gate", False)}))
    run_until(scheduler, lambda: len(scheduler.published) >= 3)
    assert all("gate" not in task_id for task_id in scheduler.published), scheduler.published
    gate = scheduler.schedule["gate"].schedule
    assert type(gate) is Gate and gate.open is False
    assert gate is scheduler.app.conf.beat_schedule["gate"]["schedule"], "the schedule was copied"


def test_is_due_that_raises_is_logged_once_per_change_and_counted(factory, caplog) -> None:
    recorder = Recorder()
    scheduler = elected(factory.make({ENTRY: every(1), "odd": custom("Odd", "text")}, recorder))
    with caplog.at_level(logging.INFO, logger="beatleader"):
        run_until(scheduler, lambda: len(scheduler.published) >= 4, timeout=15)
    lines = [r.getMessage() for r in caplog.records if "cannot tell when 'odd'" in r.getMessage()]
    assert len(lines) == 1, lines
    assert [kind for kind, _ in recorder.problems].count("entry-schedule") == 1, recorder.problems


def test_a_schedule_whose_repr_raises_can_start_and_lead(factory) -> None:
    scheduler = elected(factory.make({"bad repr": custom("BadRepr", 1)}))
    run_until(scheduler, lambda: len(scheduler.published) >= 2)
    assert len(scheduler.fingerprint()) == 12


# -- 2. every is_due form celery accepts --------------------------------------------------------


FORMS = ["schedstate", "tuple-float", "tuple-int", "int-flags", "none-delay"]


def test_every_is_due_form_celery_accepts_runs_the_entry(factory) -> None:
    """Each form as its own entry of one scheduler, beside a plain one: each runs 3 times."""
    entries = {ENTRY: every(1), **{form: custom("ReturnForm", form, 1) for form in FORMS}}
    scheduler = elected(factory.make(entries))

    def counts() -> dict[str, int]:
        return {name: scheduler.schedule[name].total_run_count for name in entries}

    # an int delay or a None one may wait up to 1 s more a run
    run_until(scheduler, lambda: min(counts().values()) >= 3, timeout=20)
    assert all(count >= 3 for count in counts().values()), counts()


def test_false_none_means_ask_again_at_max_interval_as_in_celery(factory, zk_server) -> None:
    """celery's tick returns ``max_interval`` for ``(False, None)``: ask again then."""
    entry_schedule = ReturnForm("none-delay", 3600)
    entry = beat.ScheduleEntry("x", "tests.app.record", schedule=entry_schedule)
    scheduler = factory.make({}, max_interval=7)
    entry.last_run_at = scheduler.server_now()
    assert entry_schedule.is_due(entry.last_run_at) == (False, None)
    assert scheduler.safe_is_due(entry) == (False, 7.0)
    celery_scheduler = beat.Scheduler(make_app({}, set_as_current=False), lazy=True)
    celery_scheduler.max_interval = 7
    celery_scheduler.schedule["x"] = entry
    assert celery_scheduler.tick() == pytest.approx(7, abs=0.02)  # celery's drift: -0.01 s


# -- 3. idempotent lifecycle --------------------------------------------------------------------


def test_setup_schedule_twice_keeps_one_session_and_one_contender(
    factory, zk_client, zk_root
) -> None:
    scheduler = elected(factory.make({ENTRY: every(1)}))
    session = scheduler._zk.client_id if scheduler._zk else None
    scheduler.setup_schedule()
    scheduler.setup_schedule()
    assert len(contenders(zk_client, zk_root)) == 1
    assert scheduler._zk is not None and scheduler._zk.client_id == session
    run_until(scheduler, lambda: len(scheduler.published) >= 2)
    assert scheduler.is_leader


def test_close_sync_and_setup_in_any_order_keep_at_most_one_contender(
    factory, zk_client, zk_root
) -> None:
    scheduler = elected(factory.make({ENTRY: every(1)}))
    scheduler.sync()
    scheduler.close()
    scheduler.close()
    scheduler.sync()
    wait_for(lambda: not contenders(zk_client, zk_root), 10, message="no contender after close")
    scheduler.setup_schedule()
    scheduler.setup_schedule()
    elected(scheduler)
    assert len(contenders(zk_client, zk_root)) == 1
    before = len(scheduler.published)
    run_until(scheduler, lambda: len(scheduler.published) >= before + 2)
    scheduler.sync()
    scheduler.close()
    wait_for(lambda: not contenders(zk_client, zk_root), 10, message="no contender after close")


def test_a_closed_scheduler_ends_celerys_beat_loop(factory, zk_client, zk_root) -> None:
    """celery 5.7's SIGTERM handler closes the scheduler and raises SystemExit, and its
    ``sync()`` no longer sets the loop's shutdown flag: a loop that ticked on after the close
    never ended (seen once: a beat at 100% of a 30 s stop timeout). Here ``close`` alone, from
    another thread, with no SystemExit and no flag, must end celery's own loop."""
    scheduler = elected(factory.make({ENTRY: every(1)}))

    class Loop(beat.Service):  # type: ignore[misc]
        scheduler: Any = None  # shadows celery's lazy property (as beatleader's embedded beat)

    loop = Loop(scheduler.app)
    loop.scheduler = scheduler
    thread = threading.Thread(target=loop.start, daemon=True)
    thread.start()
    wait_for(lambda: len(scheduler.published) >= 1, 10, message="the loop sends a run")
    scheduler.close()
    thread.join(10)
    assert not thread.is_alive(), "celery's loop ticked on after close()"
    with pytest.raises(SystemExit):
        scheduler.tick()
    wait_for(lambda: not contenders(zk_client, zk_root), 10, message="no contender after close")


def test_a_lazy_scheduler_opens_no_session_until_setup(factory, zk_client, zk_root) -> None:
    """celery's ``beat`` command builds a ``lazy=True`` scheduler for its banner: no election."""
    scheduler = factory.make({ENTRY: every(1)}, lazy=True)
    assert scheduler._zk is None and not contenders(zk_client, zk_root)
    scheduler.setup_schedule()
    elected(scheduler)
    assert len(contenders(zk_client, zk_root)) == 1


# -- 5. which clock a schedule sees -------------------------------------------------------------


def test_a_schedule_with_its_own_nowfun_keeps_it(factory) -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    calls: list[datetime] = []

    def tokyo_now() -> datetime:
        moment = datetime.now(tokyo)
        calls.append(moment)
        return moment

    scheduler = elected(factory.make({}))
    app_entry = beat.ScheduleEntry(
        "zoned", "tests.app.record", args=["zoned"], schedule=Zoned(tokyo_now, 1)
    )
    scheduler.tick()  # the takeover: changes reported before it are superseded by its read
    scheduler.update_entries({"zoned": app_entry})
    run_until(
        scheduler, lambda: getattr(scheduler.schedule.get("zoned"), "total_run_count", 0) >= 2
    )
    assert calls, "the schedule's own nowfun was never called"
    last = scheduler.schedule["zoned"].last_run_at
    assert last is not None and last.utcoffset() == timedelta(hours=9), last
    assert scheduler.schedule["zoned"].schedule.nowfun is tokyo_now


def test_a_schedule_without_nowfun_runs_on_zookeepers_clock(factory) -> None:
    class Skewed(Recording):
        def local_time(self) -> float:
            return time.time() + 3600.0  # this machine's clock is an hour fast

    app = make_app({"TEST_MAX_INTERVAL": "1"}, set_as_current=False)
    settings = Settings.from_app(app, zk_hosts=factory.hosts, path=factory.root, session_timeout=2)
    scheduler = Skewed(app, beatleader_settings=settings, beatleader_observers=Observers())
    scheduler.published = []
    factory.made.append(scheduler)
    elected(scheduler)
    scheduler.tick()  # the takeover: changes reported before it are superseded by its read
    plain = schedule(timedelta(seconds=1))
    scheduler.update_entries(
        {"plain": beat.ScheduleEntry("plain", "tests.app.record", args=["plain"], schedule=plain)}
    )
    run_until(
        scheduler,
        lambda: "plain" in scheduler.schedule and scheduler.schedule["plain"].total_run_count >= 1,
    )
    last = scheduler.schedule["plain"].last_run_at
    off = abs((last.astimezone(timezone.utc) - datetime.now(timezone.utc)).total_seconds())
    assert off < 60, f"last_run_at {last} is {off:.0f} s off ZooKeeper's (the true) time"
    assert plain.nowfun is None, "the user's schedule object was changed"


# -- 6. each public method of celery.beat.Scheduler ----------------------------------------------


class _MarkedEntry(beat.ScheduleEntry):  # type: ignore[misc]
    """A user's own ``Scheduler.Entry`` class."""


def test_a_subclass_entry_class_builds_the_static_entries_as_in_celery(factory) -> None:
    class WithEntry(Recording):
        Entry = _MarkedEntry

    app = make_app({"TEST_SCHEDULE": json.dumps({ENTRY: every(1)})}, set_as_current=False)
    settings = Settings.from_app(app, zk_hosts=factory.hosts, path=factory.root, session_timeout=2)
    scheduler = WithEntry(app, beatleader_settings=settings, beatleader_observers=Observers())
    scheduler.published = []
    factory.made.append(scheduler)
    celery_scheduler = type("CeleryWithEntry", (beat.Scheduler,), {"Entry": _MarkedEntry})(app)
    assert type(scheduler.schedule[ENTRY]) is type(celery_scheduler.schedule[ENTRY])
    assert type(scheduler.schedule[ENTRY]) is _MarkedEntry
    run_until(elected(scheduler), lambda: len(scheduler.published) >= 2)


def test_setup_installs_the_entries_celery_beat_installs(factory, tmp_path) -> None:
    """The entries of celery's default scheduler (``PersistentScheduler``), default ones too.

    (celery's base ``Scheduler.setup_schedule`` installs the default entries *before* merging
    ``beat_schedule``, which removes them again; the scheduler ``celery beat`` runs keeps them.)
    """
    schedule_spec = {ENTRY: every(1), "other": every(5)}
    scheduler = factory.make(schedule_spec)
    app = make_app({"TEST_SCHEDULE": json.dumps(schedule_spec)}, set_as_current=False)
    celery_scheduler = beat.PersistentScheduler(app, schedule_filename=str(tmp_path / "s"))
    assert sorted(scheduler.schedule) == sorted(celery_scheduler.schedule)
    assert "celery.backend_cleanup" in scheduler.schedule  # result_expires, no auto-expiry
    for name, entry in celery_scheduler.schedule.items():
        ours = scheduler.schedule[name]
        assert (ours.task, ours.args, ours.kwargs, ours.options, ours.schedule) == (
            entry.task,
            entry.args,
            entry.kwargs,
            entry.options,
            entry.schedule,
        )


def test_add_and_update_from_dict_schedule_the_entry_here_and_send_it_fenced(
    factory, zk_client, zk_root
) -> None:
    """celery's ``add``/``update_from_dict``/``merge_inplace`` change this scheduler's schedule.

    beatleader's too: while it leads the entry is sent through the fence and the outbox (run
    state in ZooKeeper, deterministic task ids); it is not shared with the other instances
    (``beatleader.entries.add`` is the shared way).
    """
    scheduler = elected(factory.make({ENTRY: every(1)}))
    run_until(scheduler, lambda: len(scheduler.published) >= 1)
    scheduler.add(
        name="added", task="tests.app.record", args=["added"], schedule=timedelta(seconds=1)
    )
    scheduler.update_from_dict(
        {"merged": {"task": "tests.app.record", "args": ["merged"], "schedule": 1.0}}
    )
    assert isinstance(scheduler.schedule["added"], beat.ScheduleEntry)
    run_until(
        scheduler,
        lambda: all(
            scheduler._stored.get(name) is not None
            and scheduler._stored[name].state is not None
            and scheduler._stored[name].state.total_run_count >= 2  # type: ignore[union-attr]
            for name in ("added", "merged")
        ),
    )
    assert {"added", "merged"} <= set(zk_client.get_children(f"{zk_root}/entries"))


def test_set_schedule_replaces_what_is_sent(factory) -> None:
    scheduler = elected(factory.make({ENTRY: every(1), "other": every(1)}))
    run_until(scheduler, lambda: scheduler.schedule["other"].total_run_count >= 1)
    scheduler.schedule = {ENTRY: scheduler.schedule[ENTRY]}  # celery's set_schedule
    assert sorted(scheduler.get_schedule()) == [ENTRY]
    tick_for(scheduler, 1.5)
    sent = len(scheduler.published)
    run_until(scheduler, lambda: len(scheduler.published) >= sent + 2)
    assert "other" not in scheduler.schedule


def test_a_scheduler_is_due_override_decides_as_in_celery(factory) -> None:
    class Holding(Recording):
        def is_due(self, entry: Any) -> Any:
            if entry.name == "held":
                return beat.schedstate(False, 0.2)
            return super().is_due(entry)

    app = make_app(
        {"TEST_SCHEDULE": json.dumps({ENTRY: every(1), "held": every(1)})}, set_as_current=False
    )
    settings = Settings.from_app(app, zk_hosts=factory.hosts, path=factory.root, session_timeout=2)
    scheduler = Holding(app, beatleader_settings=settings, beatleader_observers=Observers())
    scheduler.published = []
    factory.made.append(scheduler)
    run_until(elected(scheduler), lambda: scheduler.schedule[ENTRY].total_run_count >= 3)
    assert scheduler.schedule["held"].total_run_count == 0


def test_apply_entry_and_apply_async_send_at_once_as_in_celery(
    factory, caplog, monkeypatch
) -> None:
    """Unchanged: a direct send, outside the fence, a fresh task id, on any instance."""
    scheduler = factory.make({ENTRY: every(3600)})
    entry = scheduler.schedule[ENTRY]
    result = scheduler.apply_async(entry, advance=False)
    assert result is not None and result.id not in scheduler.published
    assert scheduler.schedule[ENTRY].total_run_count == 0  # advance=False: as celery

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("broker unreachable (test)")

    monkeypatch.setattr(scheduler, "apply_async", unreachable)
    celery_log = logging.getLogger("celery.beat")  # celery's loggers may not propagate
    celery_log.addHandler(caplog.handler)
    try:
        scheduler.apply_entry(entry)  # celery logs a send that fails; it never raises
    finally:
        celery_log.removeHandler(caplog.handler)
    assert "Message Error" in caplog.text and "broker unreachable" in caplog.text


def test_tick_returns_seconds_at_most_max_interval(factory) -> None:
    scheduler = factory.make({"hourly": every(3600)}, max_interval=2)
    follower_or_leader = [scheduler.tick() for _ in range(3)]
    elected(scheduler)
    leading = [scheduler.tick() for _ in range(3)]
    for delay in follower_or_leader + leading:
        assert isinstance(delay, float) and 0.0 <= delay <= 2.0, delay


def test_sync_writes_no_file_and_info_names_zookeeper(factory, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    scheduler = elected(factory.make({ENTRY: every(1)}))
    run_until(scheduler, lambda: len(scheduler.published) >= 1)
    scheduler.sync()
    assert list(tmp_path.iterdir()) == []
    assert scheduler.info.startswith(f"ZooKeeper {factory.hosts}")


def test_a_fresh_entry_runs_on_zookeepers_clock_when_this_machine_is_ahead(
    zk_server, zk_root
) -> None:
    """celery sets a new entry's ``last_run_at`` from the app's clock; on a machine a month
    ahead of ZooKeeper, that held the entry's first run back a month. It runs within seconds."""
    app = make_app({"TEST_SCHEDULE": json.dumps({ENTRY: every(1)})}, set_as_current=False)
    real_now = app.now
    app.now = lambda: real_now() + timedelta(days=30)  # type: ignore[method-assign]
    settings = Settings.from_app(app, zk_hosts=zk_server.hosts, path=zk_root, session_timeout=2)
    scheduler = Recording(app, beatleader_settings=settings, beatleader_observers=Observers())
    scheduler.published = []
    try:
        elected(scheduler)
        run_until(scheduler, lambda: len(scheduler.published) >= 2, timeout=15)
        last = scheduler.schedule[ENTRY].last_run_at
        assert abs((last - datetime.now(timezone.utc)).total_seconds()) < 5  # ZooKeeper's time
    finally:
        scheduler.close()
