"""The Celery app that test beat and worker processes run: ``celery -A tests.app beat ...``.

Shaped entirely by environment variables, read when the module is imported:

``TEST_BROKER_DIR``
    kombu filesystem transport in that folder (consumed messages are kept in ``processed/``).
``TEST_REDIS_URL``
    broker URL when there is no ``TEST_BROKER_DIR``; always also ``redbeat_redis_url``.
``TEST_BROKER_URL``
    any other broker URL (e.g. ``amqp://`` of ``tests.rabbitmq``), when there is no
    ``TEST_BROKER_DIR``; it takes precedence over ``TEST_REDIS_URL`` as the broker.
``TEST_QUEUE``
    ``task_default_queue`` (celery's default ``celery``): beats send to it and workers consume
    it, so tests sharing one broker (e.g. one RabbitMQ for a module) do not see each other's
    messages.
``TEST_CONFIRM_PUBLISH``
    when set, ``broker_transport_options["confirm_publish"]`` (py-amqp waits for RabbitMQ's
    publisher confirm, so a publish the broker did not take raises instead of vanishing).
``TEST_SCHEDULE``
    JSON ``{name: {"every": seconds} | {"crontab": "m h dom mon dow"} | {"custom": "Class",
    "custom_args": [...]}, ...}`` (``custom``: a class of ``tests.user_schedules``); optional keys
    ``"task"`` (default ``tests.app.record``), ``"args"`` (default ``[name]``) and
    ``"options"`` (apply_async options).
``TEST_MAX_INTERVAL``
    ``beat_max_loop_interval`` in seconds.
``TEST_TIMEZONE``
    celery's ``timezone`` setting (default ``UTC``), e.g. ``Europe/Paris`` for the DST tests.
``TEST_RESULT_DIR``
    ``file://`` result backend with ``result_expires=60`` (celery adds ``celery.backend_cleanup``).
``TEST_EXECUTION_LOG``
    file that :func:`record` appends one JSON line per execution to.
``TEST_APP_NAME``
    the app's name (``app.main``; default ``beatleader_tests``), e.g. for two apps on one path.
``TEST_BEAT_SCHEDULER``
    celery's ``beat_scheduler`` setting (e.g. ``beatleader``), for runs without ``-S``.
``TEST_DEDUP``
    when set, ``beatleader.dedup.install(app)`` before any task is defined (``after-tasks``:
    after them); ``TEST_DEDUP_REQUEUE_LIMIT``: see ``tests.dedup_tasks.policy``.
``TEST_ACKS_LATE``
    when set, ``task_acks_late``; ``TEST_VISIBILITY_TIMEOUT`` (seconds) makes Redis redeliver
    unacknowledged messages after that long (checked every second).

beatleader's own settings come from ``BEATLEADER_*`` variables; nothing here sets them.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.schedules import crontab, schedule

from beatleader.testing import fstransport
from beatleader.worker import guard as dedup
from tests import dedup_tasks

# SIGUSR1 writes every thread's stack to the log: what a process stuck at its exit was doing
# (tests.harness.CeleryProcess.wait_exit asks for it before it fails).
faulthandler.register(signal.SIGUSR1, all_threads=True)

APP_NAME = "beatleader_tests"
RECORD_TASK = "tests.app.record"
#: How often a worker polls the filesystem broker (kombu's default is 1 s).
FILESYSTEM_POLLING_INTERVAL = 0.05


def make_app(environ: Mapping[str, str], *, set_as_current: bool = True) -> Celery:
    """A fresh app configured from ``environ`` (tests may build one without touching os.environ)."""
    name = environ.get("TEST_APP_NAME") or APP_NAME
    celery_app = Celery(name, set_as_current=set_as_current)
    celery_app.conf.update(build_config(environ))
    if environ.get("TEST_DEDUP") and environ["TEST_DEDUP"] != "after-tasks":
        dedup.install(celery_app, dedup_tasks.policy(environ))  # tasks defined after install()

    @celery_app.task(name=RECORD_TASK, bind=True, shared=False)
    def record(self: Task, name: str) -> None:
        """Append one JSON line about this execution to ``TEST_EXECUTION_LOG``."""
        append_execution(environ.get("TEST_EXECUTION_LOG"), name, self.request.id)

    dedup_tasks.register(celery_app, environ, append_execution)
    if environ.get("TEST_DEDUP") == "after-tasks":
        dedup.install(celery_app, dedup_tasks.policy(environ))
    return celery_app


def build_config(environ: Mapping[str, str]) -> dict[str, Any]:
    """The celery settings ``environ`` asks for."""
    conf: dict[str, Any] = {
        "timezone": environ.get("TEST_TIMEZONE") or "UTC",
        "enable_utc": True,
        "task_always_eager": False,
        "broker_url": "memory://",
        "broker_connection_retry_on_startup": True,
    }
    broker_dir = environ.get("TEST_BROKER_DIR")
    redis_url = environ.get("TEST_REDIS_URL")
    broker_url = environ.get("TEST_BROKER_URL")
    if broker_dir:
        folder = Path(broker_dir)
        fstransport.register()  # kombu's filesystem transport, with atomic puts
        conf["broker_url"] = f"{fstransport.SCHEME}://"
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "store_processed": True,
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "polling_interval": FILESYSTEM_POLLING_INTERVAL,
        }
        (folder / "processed").mkdir(parents=True, exist_ok=True)
    elif broker_url:
        conf["broker_url"] = broker_url
    elif redis_url:
        conf["broker_url"] = redis_url
    if redis_url:
        conf["redbeat_redis_url"] = redis_url
    if environ.get("TEST_QUEUE"):
        conf["task_default_queue"] = environ["TEST_QUEUE"]
    if environ.get("TEST_ACKS_LATE"):
        conf["task_acks_late"] = True
    if environ.get("TEST_VISIBILITY_TIMEOUT"):
        conf["broker_transport_options"] = {
            "visibility_timeout": float(environ["TEST_VISIBILITY_TIMEOUT"]),
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        }
    if environ.get("TEST_CONFIRM_PUBLISH"):
        conf.setdefault("broker_transport_options", {})["confirm_publish"] = True
    if environ.get("TEST_MAX_INTERVAL"):
        conf["beat_max_loop_interval"] = float(environ["TEST_MAX_INTERVAL"])
    if environ.get("TEST_RESULT_DIR"):
        conf["result_backend"] = f"file://{Path(environ['TEST_RESULT_DIR']).resolve()}"
        conf["result_expires"] = 60
    if environ.get("TEST_BEAT_SCHEDULER"):
        conf["beat_scheduler"] = environ["TEST_BEAT_SCHEDULER"]
    conf["beat_schedule"] = parse_schedule(environ.get("TEST_SCHEDULE") or "{}")
    return conf


def parse_schedule(text: str) -> dict[str, dict[str, Any]]:
    """``TEST_SCHEDULE`` JSON -> a celery ``beat_schedule`` dict."""
    specs = json.loads(text)
    if not isinstance(specs, dict):
        raise ValueError(f"TEST_SCHEDULE must be a JSON object, not {text!r}")
    beat_schedule: dict[str, dict[str, Any]] = {}
    for name, spec in specs.items():
        entry: dict[str, Any] = {
            "task": spec.get("task", RECORD_TASK),
            "schedule": _schedule(name, spec),
            "args": list(spec.get("args", [name])),
        }
        if spec.get("options"):
            entry["options"] = dict(spec["options"])
        beat_schedule[name] = entry
    return beat_schedule


def _schedule(name: str, spec: Mapping[str, Any]) -> schedule | crontab:
    if "custom" in spec:
        from tests import user_schedules

        return user_schedules.make(str(spec["custom"]), list(spec.get("custom_args", [])))
    if "every" in spec:
        return schedule(timedelta(seconds=float(spec["every"])))
    if "crontab" in spec:
        minute, hour, day_of_month, month_of_year, day_of_week = str(spec["crontab"]).split()
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    raise ValueError(f"schedule entry {name!r} needs 'every' or 'crontab': {spec!r}")


def append_execution(log_path: str | None, name: str, task_id: str | None) -> None:
    """One atomic O_APPEND write of ``{"name", "id", "pid", "ts"}`` to ``log_path``."""
    if not log_path:
        raise RuntimeError("TEST_EXECUTION_LOG is not set")
    line = json.dumps({"name": name, "id": task_id, "pid": os.getpid(), "ts": time.time()})
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


app = make_app(os.environ)
record = app.tasks[RECORD_TASK]


# -- test-only faults in the scheduler ------------------------------------------------------------

from beatleader.beat.scheduler import Scheduler as _BeatleaderScheduler  # noqa: E402


class FaultScheduler(_BeatleaderScheduler):
    """``beatleader.Scheduler`` with faults injected from the environment (tests only).

    ``TEST_CLOCK_SKEW``
        seconds added to this instance's wall clock (``Scheduler.local_time``).
    ``TEST_PAUSE_BEFORE_PUBLISH``
        seconds to sleep after the first commit with runs to publish, before they are published
        (once per process; logs ``test: pausing before publishing``), so a test can SIGKILL or
        SIGSTOP the process there.
    ``TEST_SLOW_PUBLISH``
        seconds every publish takes (logs ``test: publishing slowly``), inside the gap where
        SIGTERM must be held; a backfilled run's too.
    """

    def local_time(self) -> float:
        return super().local_time() + float(os.environ.get("TEST_CLOCK_SKEW") or 0)

    _paused = False

    def _publish_outbox(self) -> None:
        pause = float(os.environ.get("TEST_PAUSE_BEFORE_PUBLISH") or 0)
        if pause and self.unpublished() and not self._paused:
            self._paused = True
            _test_log(f"test: pausing before publishing {self.unpublished()}")
            time.sleep(pause)
        super()._publish_outbox()

    def publish_run(self, entry: Any, ordinal: int, incarnation: str | None = None) -> str:
        slow = float(os.environ.get("TEST_SLOW_PUBLISH") or 0)
        if slow:
            _test_log(f"test: publishing slowly run {ordinal} of {entry.name}")
            time.sleep(slow)
        return super().publish_run(entry, ordinal, incarnation)

    def publish_backfill(self, entry: Any, scheduled: Any) -> str:
        slow = float(os.environ.get("TEST_SLOW_PUBLISH") or 0)
        if slow:
            _test_log(f"test: publishing slowly backfill {scheduled.isoformat()} of {entry.name}")
            time.sleep(slow)
        return super().publish_backfill(entry, scheduled)


def _test_log(line: str) -> None:
    os.write(2, f"{line}\n".encode())
