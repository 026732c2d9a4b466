"""``dedup.install`` without a worker: which requests are guarded, wrapping, the setting."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from celery import Celery
from celery.utils.threads import LocalStack

from beatleader.config import ConfigError, Settings
from beatleader.worker import guard as dedup
from beatleader.zk import layout

ROOT = "/beatleader/unit"


class Request:
    """The attributes of celery's request context the guard reads."""

    def __init__(self, task_id: str, headers: dict[str, Any] | None = None) -> None:
        self.id = task_id
        self.headers = headers
        self.retries = 0
        for name, value in (headers or {}).items():
            setattr(self, name, value)


@pytest.fixture
def app() -> Celery:
    app = Celery("unit", set_as_current=False)
    app.conf.beatleader_path = ROOT
    return app


def test_only_genuine_runs_are_guarded(app: Celery) -> None:
    guard = dedup.install(app)
    run_id = layout.run_task_id(ROOT, "e", 3)
    key = guard.run_key(Request(run_id, layout.run_headers(ROOT, "e", 3)))
    assert key is not None and (key.entry, key.ordinal, key.task_id) == ("e", 3, run_id)
    assert key.folder == "e"
    assert guard.run_key(Request(str(uuid.uuid4()))) is None
    forged = Request(str(uuid.uuid4()), layout.run_headers(ROOT, "e", 3))
    assert guard.run_key(forged) is None
    bad_ordinal = Request(run_id, {**layout.run_headers(ROOT, "e", 3), "beatleader_run": True})
    assert guard.run_key(bad_ordinal) is None
    other_root = layout.run_task_id("/elsewhere", "e", 3)
    key = guard.run_key(Request(other_root, layout.run_headers("/elsewhere", "e", 3)))
    assert key is not None and key.folder != "e"  # kept apart from this root's entry "e"


def test_tasks_before_and_after_install_are_wrapped_once(app: Celery) -> None:
    @app.task(name="before", shared=False)
    def before() -> str:
        return "before"

    guard = dedup.install(app)
    assert dedup.install(app) is guard

    @app.task(name="after", shared=False)
    def after() -> str:
        return "after"

    app.finalize()
    for name in ("before", "after"):
        assert getattr(app.tasks[name].run, "__beatleader_dedup__", False), name
        assert app.tasks[name].run() == name  # not a beatleader run: runs untouched
    assert not getattr(app.tasks["celery.backend_cleanup"].run, "__beatleader_dedup__", False)
    assert guard.wrap_tasks() == 0


def test_a_task_registered_after_the_worker_started_is_wrapped_at_its_first_run(
    app: Celery,
) -> None:
    guard = dedup.install(app)
    app.finalize()

    @app.task(name="late", shared=False)
    def late() -> None:
        return None

    task = app.tasks["late"]
    assert not getattr(task.run, "__beatleader_dedup__", False)
    task.request_stack = LocalStack()
    guard.on_prerun(sender=task, task_id="x")
    assert getattr(task.run, "__beatleader_dedup__", False)


def test_the_retention_setting_is_validated() -> None:
    assert Settings.from_app(None, dedup_retention="60").dedup_retention == 60.0
    with pytest.raises(ConfigError, match=r"^dedup_retention \(argument\) = '0' is invalid: "):
        Settings.from_app(None, dedup_retention="0")
