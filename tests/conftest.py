"""Fixtures: a real ZooKeeper, per-test ZooKeeper roots, beat/worker process factories, redis.

When a test fails, the logs of the processes its factories started are attached to the report
(sections "beat-1 pid=... rc=..." etc.), and every process is killed at teardown regardless.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
from kazoo.client import KazooClient

from tests.cluster import SendingCluster, start_sending_cluster
from tests.django_support import Databases, configured_django, use
from tests.harness import (
    BeatProcess,
    CeleryProcess,
    RedisServer,
    WorkerProcess,
    ZooKeeperServer,
    connected_client,
)

P = TypeVar("P", bound=CeleryProcess)


class ProcessFactory(Generic[P]):
    """Starts processes of one kind for a test and kills all of them at teardown."""

    def __init__(self, make: Callable[..., P], workdir: Path, base_env: Mapping[str, str]) -> None:
        self._make = make
        self.workdir = workdir
        self.base_env = base_env
        self.processes: list[P] = []

    def __call__(self, env: Mapping[str, str] | None = None, **kwargs: Any) -> P:
        """Start one process with ``base_env`` updated by ``env``; kwargs go to the class."""
        process = self._make(self.workdir, {**self.base_env, **(env or {})}, **kwargs)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            process.close()

    def diagnostics(self) -> list[tuple[str, str]]:
        return [section for p in self.processes for section in p.diagnostics()]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the logs of the test's processes (and private ZooKeeper) to a failed report."""
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for value in getattr(item, "funcargs", {}).values():
            diagnostics = getattr(value, "diagnostics", None)
            if callable(diagnostics):
                for title, text in diagnostics():
                    report.sections.append((f"log {title}", text))
    return report


@pytest.fixture(scope="session")
def zk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """One standalone ZooKeeper shared by the whole run; do not stop it in a test."""
    with ZooKeeperServer(tmp_path_factory.mktemp("zookeeper")) as server:
        yield server


@pytest.fixture
def private_zk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """A ZooKeeper of this test's own, free to stop, kill, pause or restart."""
    with ZooKeeperServer(tmp_path_factory.mktemp("private-zookeeper")) as server:
        yield server


@pytest.fixture
def zk_root() -> str:
    """A fresh beatleader root path for this test."""
    return f"/bltest/{uuid.uuid4().hex}"


@pytest.fixture
def zk_client(zk_server: ZooKeeperServer) -> Iterator[KazooClient]:
    """A connected kazoo client of the shared server."""
    with connected_client(zk_server.hosts) as client:
        yield client


@pytest.fixture
def broker_dir(tmp_path: Path) -> Path:
    """An empty folder for kombu's filesystem transport."""
    folder = tmp_path / "broker"
    folder.mkdir()
    return folder


@pytest.fixture
def execution_log(tmp_path: Path) -> Path:
    """Where ``tests.app.record`` appends executions (see ``harness.read_executions``)."""
    return tmp_path / "executions.jsonl"


@pytest.fixture
def beat_env(
    zk_server: ZooKeeperServer, zk_root: str, broker_dir: Path, execution_log: Path
) -> dict[str, str]:
    """Environment for beat/worker processes: shared ZooKeeper, this test's root and broker."""
    return {
        "BEATLEADER_ZK_HOSTS": zk_server.hosts,
        "BEATLEADER_PATH": zk_root,
        "BEATLEADER_SESSION_TIMEOUT": "2",
        "TEST_BROKER_DIR": str(broker_dir),
        "TEST_EXECUTION_LOG": str(execution_log),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def beats(tmp_path: Path, beat_env: dict[str, str]) -> Iterator[ProcessFactory[BeatProcess]]:
    """``beats(env=None, scheduler=..., name=..., extra_args=...)`` starts a BeatProcess."""
    factory = ProcessFactory(BeatProcess, tmp_path / "procs", beat_env)
    yield factory
    factory.close()


@pytest.fixture
def workers(tmp_path: Path, beat_env: dict[str, str]) -> Iterator[ProcessFactory[WorkerProcess]]:
    """``workers(env=None, ...)`` starts a WorkerProcess on the same broker."""
    factory = ProcessFactory(WorkerProcess, tmp_path / "procs", beat_env)
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the run; errors (never skips) when redis-server is missing."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def sending_cluster(
    beats: ProcessFactory[BeatProcess], zk_client: KazooClient, zk_root: str, broker_dir: Path
) -> SendingCluster:
    """Three beats on a 1 s entry (``tests.cluster.ENTRY``) whose leader has sent twice."""
    return start_sending_cluster(beats, zk_client, zk_root, broker_dir)


@pytest.fixture(scope="session")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Databases]:
    """Django in this process over PostgreSQL (``pg``) and SQLite (``default``), migrated once."""
    with configured_django(tmp_path_factory.mktemp("db")) as found:
        yield found


@pytest.fixture
def use_db(databases: Databases) -> Iterator[Callable[[str], str]]:
    """``use_db(alias)``: empty that database's periodic tasks; returns its URL."""
    from django.db import connections

    yield lambda alias: use(databases, alias)
    connections.close_all()
