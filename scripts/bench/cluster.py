"""The processes of the benchmark: its own ZooKeeper and Redis, the ``celery beat`` fleet, the
environment every beat gets, and the sends read back from a filesystem broker.

Guarantees: every beat started through a ``Fleet`` is killed by ``Fleet.close`` and the servers
are stopped on the way out of ``servers``, whatever happens in between.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from beatleader.testing.localproc import LoggedProcess
from scripts.bench.analysis import Send, late_ms, origin_pid
from scripts.bench.common import (
    ENTRY,
    INTERVAL_S,
    MAX_LOOP_INTERVAL,
    REPO_ROOT,
    SCRIPTS_DIR,
    STARTUP_TIMEOUT,
    progress,
)
from tests.harness import FilesystemBroker, RedisServer, SentMessage, ZooKeeperServer, wait_for


class Beat(LoggedProcess):
    """One ``celery -A bench_app beat -S <scheduler>`` subprocess logging to a file."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        env: Mapping[str, str],
        scheduler: str,
        loglevel: str,
        root: Path = REPO_ROOT,
    ) -> None:
        """``root``: the source tree the beat runs (its folder, first on ``sys.path``)."""
        args = [
            *(sys.executable, "-m", "celery", "-A", "bench_app", "beat", "-S", scheduler),
            f"--loglevel={loglevel}",
            *("--schedule", str(workdir / f"{name}.db")),
        ]
        super().__init__(args, workdir / f"{name}.log", cwd=root, env=env, name=name)


class Fleet:
    """Every beat the benchmark starts, so that all of them are killed whatever happens."""

    def __init__(self, workdir: Path, base_env: Mapping[str, str], root: Path = REPO_ROOT) -> None:
        """``root``: the source tree the beats run (another checkout: ``--before``)."""
        self.workdir = workdir
        self.base_env = dict(base_env)
        self.root = root
        self.beats: list[Beat] = []

    def start(
        self, label: str, count: int, scheduler: str, env: Mapping[str, str], loglevel: str = "INFO"
    ) -> list[Beat]:
        names = [f"{label}-{len(self.beats) + i + 1}" for i in range(count)]
        merged = {**self.base_env, **env}
        started = [
            Beat(name, self.workdir, merged, scheduler, loglevel, self.root) for name in names
        ]
        self.beats.extend(started)
        return started

    def by_pid(self, pid: int) -> Beat:
        return next(beat for beat in self.beats if beat.pid == pid)

    def close(self) -> None:
        for beat in self.beats:
            beat.kill()
            beat.wait_exit()


def stop_all(beats: Sequence[Beat]) -> None:
    for beat in beats:
        beat.stop()


def base_env(
    zk_hosts: str, redis_url: str, args: argparse.Namespace, root: Path = REPO_ROOT
) -> dict[str, str]:
    """The environment of every beat: servers, timeouts, bench_app and ``root`` on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "BEATLEADER_"))}
    python_path = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
    return {
        **env,
        "PYTHONPATH": os.pathsep.join([str(root), str(SCRIPTS_DIR), *python_path]),
        "BEATLEADER_ZK_HOSTS": zk_hosts,
        "BEATLEADER_SESSION_TIMEOUT": f"{args.session_timeout:g}",
        "BENCH_REDBEAT_LOCK_TIMEOUT": f"{args.session_timeout:g}",
        "TEST_REDIS_URL": redis_url,
        "TEST_MAX_INTERVAL": MAX_LOOP_INTERVAL,
    }


@contextmanager
def servers(workdir: Path) -> Iterator[tuple[ZooKeeperServer, RedisServer]]:
    """A ZooKeeper and a Redis of the benchmark's own, stopped on the way out."""
    zk = ZooKeeperServer(workdir / "zookeeper")
    rd = RedisServer(workdir / "redis")
    try:
        progress("starting ZooKeeper and Redis")
        zk.start(timeout=60)
        rd.start()
        yield zk, rd
    finally:
        rd.stop()
        zk.stop()


@dataclass
class Context:
    """What every phase needs: settings, the fleet of beats, the Redis URL, a work folder."""

    args: argparse.Namespace
    workdir: Path
    fleet: Fleet
    redis_url: str
    zk: ZooKeeperServer

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def broker(self, label: str) -> tuple[FilesystemBroker, dict[str, str]]:
        """A fresh filesystem broker folder and the env that points beats at it."""
        folder = self.workdir / f"{label}-broker"
        folder.mkdir()
        schedule = json.dumps({ENTRY: {"every": INTERVAL_S}})
        return FilesystemBroker(folder), {"TEST_BROKER_DIR": str(folder), "TEST_SCHEDULE": schedule}


# -- sends on a filesystem broker --------------------------------------------------------------


def to_send(message: SentMessage) -> Send:
    headers = message.headers
    return Send(message.sent_ms, origin_pid(headers), message.task_id, late_ms(headers))


def read_sends(broker: FilesystemBroker, after_ms: float = 0) -> list[Send]:
    """The sends of ``ENTRY`` at or after ``after_ms``, oldest first."""
    return [to_send(m) for m in broker.for_entry(ENTRY) if m.sent_ms >= after_ms]


def wait_for_sends(
    broker: FilesystemBroker, count: int, after_ms: float = 0, interval: float = 0.1
) -> list[Send]:
    """Wait until ``count`` sends happened at or after ``after_ms``; return them."""

    def enough() -> list[Send]:
        sends = read_sends(broker, after_ms)
        return sends if len(sends) >= count else []

    found: list[Send] = wait_for(
        enough, STARTUP_TIMEOUT, interval=interval, message=f"{count} sends of {ENTRY!r}"
    )
    return found
