"""Shared by the de-duplication tests: a dedup worker environment, a publisher, counting helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from beatleader.zk import layout
from tests.app import RECORD_TASK, make_app
from tests.harness import RedisServer, WorkerProcess, read_executions

DROPPED = r"dropped a delivery of task {id}"


@pytest.fixture
def dedup_env(redis_server: RedisServer) -> dict[str, str]:
    redis.Redis.from_url(redis_server.url).flushdb()
    return {"TEST_BROKER_DIR": "", "TEST_REDIS_URL": redis_server.url, "TEST_DEDUP": "1"}


@pytest.fixture
def publisher(dedup_env: dict[str, str]) -> Iterator[Celery]:
    """A producer-only app on the test's Redis (no dedup: it only publishes)."""
    app = make_app({"TEST_REDIS_URL": dedup_env["TEST_REDIS_URL"]}, set_as_current=False)
    yield app
    app.close()


def publish_run(
    app: Celery,
    root: str,
    entry: str,
    ordinal: int,
    task: str = RECORD_TASK,
    args: list[Any] | None = None,
    incarnation: str | None = None,
    **options: Any,
) -> str:
    """Publish run ``ordinal`` of ``entry`` exactly as the beat does; return its task id."""
    task_id = layout.run_task_id(root, entry, ordinal, incarnation)
    headers = layout.run_headers(root, entry, ordinal, incarnation)
    app.send_task(task, args=args or [entry], task_id=task_id, headers=headers, **options)
    return task_id


def executions_of(log: Path, name: str) -> list[str]:
    return [str(e["id"]) for e in read_executions(log) if e["name"] == name]


def drops(worker: WorkerProcess, task_id: str) -> int:
    return len(worker.log_matches(DROPPED.format(id=task_id)))
