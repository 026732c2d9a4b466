"""Tasks for the de-duplication tests (``tests/test_dedup*.py``), registered by ``tests.app``.

Each appends JSON lines to ``TEST_EXECUTION_LOG`` through ``tests.app.append_execution``:
the ``name`` says what happened (``<name>`` = a completed execution, ``<name>:start`` = a
started one, ``<name>:attempt<N>`` = attempt N of a retried task).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery, Task

from beatleader.worker.guard import DedupPolicy

SLOW_TASK = "tests.dedup.slow"
RETRY_TASK = "tests.dedup.retry_once"
FAIL_TASK = "tests.dedup.fail"


def policy(environ: Mapping[str, str]) -> type[DedupPolicy]:
    """The guard's policy, quick for tests; ``TEST_DEDUP_REQUEUE_LIMIT`` sets its requeue limit."""

    class TestPolicy(DedupPolicy):
        connect_timeout = 1.0
        requeue_first_delay = 0.5
        requeue_max_delay = 1.0
        requeue_limit = int(environ.get("TEST_DEDUP_REQUEUE_LIMIT") or 60)

    return TestPolicy


def register(
    app: Celery, environ: Mapping[str, str], append: Callable[[str | None, str, str | None], None]
) -> None:
    """Define the test tasks on ``app`` (after ``dedup.install`` when the test asks for it)."""
    log = environ.get("TEST_EXECUTION_LOG")

    @app.task(name=SLOW_TASK, bind=True, shared=False)
    def slow(self: Task, name: str, seconds: float) -> None:
        append(log, f"{name}:start", self.request.id)
        time.sleep(seconds)
        append(log, name, self.request.id)

    @app.task(name=RETRY_TASK, bind=True, shared=False, max_retries=3)
    def retry_once(self: Task, name: str) -> Any:
        append(log, f"{name}:attempt{self.request.retries}", self.request.id)
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        append(log, name, self.request.id)

    @app.task(name=FAIL_TASK, bind=True, shared=False)
    def fail(self: Task, name: str) -> None:
        append(log, name, self.request.id)
        raise RuntimeError(f"{name} fails on purpose")
