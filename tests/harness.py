"""Test harness: real beat/worker/redis processes, the filesystem broker's messages, ZK inspection.

Every wait here polls a condition until a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from beatleader.config import Settings
from beatleader.election.leader import CONTENDER_MARKER, sorted_contenders
from beatleader.testing.localproc import LoggedProcess
from beatleader.testing.localzk import ZooKeeperServer, free_port
from beatleader.testing.zkensemble import ZooKeeperEnsemble
from beatleader.worker.markers import decode as decode_object
from beatleader.zk import layout
from beatleader.zk.client import make_client

__all__ = [
    "REPO_ROOT",
    "BeatProcess",
    "CeleryProcess",
    "FilesystemBroker",
    "RedisServer",
    "SentMessage",
    "WorkerProcess",
    "ZooKeeperEnsemble",
    "ZooKeeperServer",
    "contenders",
    "entry_state",
    "free_port",
    "leader",
    "read_executions",
    "wait_for",
]

REPO_ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    message: str = "condition not met",
) -> T:
    """Poll ``predicate`` until it returns a truthy value and return that value.

    Raises AssertionError with ``message`` and the last value after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (after {timeout}s; last value: {value!r})")
        time.sleep(interval)


# -- celery processes ----------------------------------------------------------------------------

_process_numbers = itertools.count(1)


class CeleryProcess(LoggedProcess):
    """A ``python -m celery -A tests.app ...`` subprocess logging to a file (base class)."""

    kind = "celery"

    def __init__(
        self,
        args: Sequence[str],
        workdir: Path,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        number: int | None = None,
    ) -> None:
        self.number = number if number is not None else next(_process_numbers)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **(env or {})}
        name = name or f"{self.kind}-{self.number}"
        super().__init__(
            [sys.executable, "-m", "celery", "-A", "tests.app", *args],
            self.workdir / f"{name}.log",
            cwd=REPO_ROOT,
            env=self.env,
            name=name,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid} rc={self.returncode}>"

    def close(self) -> None:
        """Kill the process and its children (``worker -B`` forks a beat), and reap it."""
        self.kill_group()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait_exit(self, timeout: float | None = None) -> int:
        """As :meth:`LoggedProcess.wait_exit`; a process still running after ``timeout`` is
        asked for its threads' stacks first (SIGUSR1: ``tests.app`` registers faulthandler),
        so the failure's log tail shows where it is stuck."""
        try:
            return super().wait_exit(timeout)
        except AssertionError:
            if not self.alive:
                raise
            before = len(self.log())
            self.send_signal(signal.SIGUSR1)
            with contextlib.suppress(AssertionError):
                wait_for(lambda: "most recent call first" in self.log()[before:], 5, interval=0.1)
            raise AssertionError(
                f"{self.name} (pid {self.pid}) still running after {timeout}s; its threads' "
                f"stacks and log tail:\n" + self.log_tail(200)
            ) from None

    def log_matches(self, regex: str | re.Pattern[str]) -> list[re.Match[str]]:
        """Every match of ``regex`` (multiline mode) in the log so far."""
        pattern = re.compile(regex, re.M) if isinstance(regex, str) else regex
        return list(pattern.finditer(self.log()))

    def wait_for_log(
        self, regex: str | re.Pattern[str], timeout: float, count: int = 1
    ) -> re.Match[str]:
        """Wait until the log matches ``regex`` ``count`` times; return the last match.

        Fails at once, with the log tail, if the process exits before that.
        """
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.alive  # checked before reading, so the last output is seen
            matches = self.log_matches(regex)
            if len(matches) >= count:
                return matches[count - 1]
            if exited or time.monotonic() >= deadline:
                state = f"exited with {self.returncode}" if exited else f"timed out ({timeout}s)"
                raise AssertionError(
                    f"{self.name}: {state} before {count} match(es) of {regex!r} "
                    f"(found {len(matches)}); log tail:\n{self.log_tail(60)}"
                )
            time.sleep(0.05)


class BeatProcess(CeleryProcess):
    """``celery -A tests.app beat -S <scheduler>`` with its own ``--schedule`` file."""

    kind = "beat"

    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        *,
        scheduler: str = "beatleader.Scheduler",
        name: str | None = None,
        loglevel: str = "INFO",
        extra_args: Sequence[str] = (),
    ) -> None:
        number = next(_process_numbers)
        name = name or f"beat-{number}"
        self.schedule_path = Path(workdir) / f"{name}.db"
        args = [
            "beat",
            "-S",
            scheduler,
            f"--loglevel={loglevel}",
            "--schedule",
            str(self.schedule_path),
            *extra_args,
        ]
        super().__init__(args, workdir, env, name, number)

    def wait_started(self, timeout: float = 20) -> re.Match[str]:
        """Wait for celery beat's "beat: Starting..." line."""
        return self.wait_for_log(r"beat: Starting\.\.\.", timeout)

    def sent(self) -> list[str]:
        """Entry names of every "Scheduler: Sending due task <name> (<task>)" log line."""
        return [m["name"] for m in self.log_matches(r"Sending due task (?P<name>.*) \(\S+\)$")]


class WorkerProcess(CeleryProcess):
    """``celery -A tests.app worker --pool=solo --concurrency=1``, without gossip/mingle."""

    kind = "worker"

    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        *,
        name: str | None = None,
        loglevel: str = "INFO",
        extra_args: Sequence[str] = (),
    ) -> None:
        number = next(_process_numbers)
        name = name or f"worker-{number}"
        args = [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--loglevel={loglevel}",
            f"--hostname={name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            *extra_args,
        ]
        super().__init__(args, workdir, env, name, number)

    def wait_ready(self, timeout: float = 30) -> re.Match[str]:
        """Wait for the worker's "ready." line."""
        return self.wait_for_log(r"ready\.", timeout)


def read_executions(path: Path) -> list[dict[str, Any]]:
    """The JSON lines ``tests.app.record`` appended to ``path`` (empty if none yet)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- the filesystem broker -----------------------------------------------------------------------


@dataclass(frozen=True)
class SentMessage:
    """One task message kombu's filesystem transport wrote."""

    task: str
    task_id: str
    #: The first positional argument (the entry name for ``tests.app.record``).
    entry: str | None
    #: CLOCK_MONOTONIC milliseconds at publication; compare with ``time.monotonic() * 1000``.
    sent_ms: int
    path: Path
    queue: str
    headers: Mapping[str, Any]
    args: Sequence[Any]
    kwargs: Mapping[str, Any]


_MSG_NAME = re.compile(r"^(?P<ms>\d+)_(?P<uuid>[0-9a-fA-F-]+)\.(?P<queue>.+)\.msg$")


class FilesystemBroker:
    """Reads what kombu's filesystem transport wrote to ``folder``.

    Consumed messages are found too: ``tests.app`` keeps them in ``folder/processed``.
    """

    #: A file younger than this that does not parse is assumed to be still being written.
    FRESH_SECONDS = 2.0

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def message_files(self) -> Iterator[Path]:
        for directory in (self.folder, self.folder / "processed"):
            if directory.is_dir():
                yield from directory.glob("*.msg")

    def messages(self) -> list[SentMessage]:
        """Every task message sent so far, pending or consumed, sorted by ``sent_ms``."""
        found: dict[str, SentMessage] = {}
        for path in self.message_files():
            message = self._read(path)
            if message is not None:
                # A message the worker moves to processed/ between the two listings is seen in
                # both: one file name is one message (a republish always makes a new file).
                found.setdefault(path.name, message)
        return sorted(found.values(), key=lambda m: (m.sent_ms, m.path.name))

    def _read(self, path: Path) -> SentMessage | None:
        match = _MSG_NAME.match(path.name)
        if not match:
            return None
        try:
            raw = path.read_bytes()
        except FileNotFoundError:  # consumed (moved to processed/) while listing
            return None
        try:
            payload = json.loads(raw)
            headers = payload.get("headers") or {}
            body = payload["body"]
            encoding = (payload.get("properties") or {}).get("body_encoding")
            if encoding == "base64":
                body = base64.b64decode(body)
            decoded = json.loads(body) if payload.get("content-type") == "application/json" else []
        except (ValueError, KeyError, TypeError):
            if time.time() - _mtime(path) < self.FRESH_SECONDS:
                return None
            raise
        if "task" not in headers:  # not a task message (e.g. a broadcast)
            return None
        args, kwargs = (decoded[0], decoded[1]) if len(decoded) >= 2 else ([], {})
        return SentMessage(
            task=headers["task"],
            task_id=headers.get("id", ""),
            entry=args[0] if args and isinstance(args[0], str) else None,
            sent_ms=int(match["ms"]),
            path=path,
            queue=match["queue"],
            headers=headers,
            args=args,
            kwargs=kwargs,
        )

    def for_entry(self, entry: str) -> list[SentMessage]:
        """The messages of ``entry`` sorted by ``sent_ms``."""
        return [m for m in self.messages() if m.entry == entry]

    def count(self, entry: str | None = None) -> int:
        """How many messages ``entry`` has (all task messages when None)."""
        messages = self.messages()
        return len(messages) if entry is None else sum(m.entry == entry for m in messages)

    def counts(self) -> Counter[str | None]:
        """Entry name -> number of messages."""
        return Counter(m.entry for m in self.messages())

    def duplicates(self) -> list[str]:
        """Task ids that were sent more than once."""
        ids = Counter(m.task_id for m in self.messages())
        return sorted(task_id for task_id, n in ids.items() if n > 1)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


# -- redis ---------------------------------------------------------------------------------------


class RedisServer:
    """A throw-away ``redis-server`` on 127.0.0.1 without persistence."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.log_path = self.workdir / "redis.log"
        self._proc: LoggedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15) -> None:
        """Start redis-server and wait until it answers PING."""
        self._proc = proc = LoggedProcess(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            self.log_path,
        )
        wait_for(
            lambda: self.ping() or not proc.alive,
            timeout,
            message=f"redis-server on port {self.port} did not answer PING",
        )
        if not proc.alive:
            raise RuntimeError(f"redis-server exited with {proc.returncode}:\n{self.log()}")

    def ping(self) -> bool:
        """True when the server answers ``PING`` with ``+PONG``."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self._proc is not None:
            self._proc.stop(timeout)

    def log(self) -> str:
        return self._proc.log() if self._proc is not None else ""

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def connected_client(
    hosts: str, timeout: float = 10, connect_timeout: float = 15, **settings: Any
) -> Iterator[KazooClient]:
    """A started client from beatleader's own factory (session ``timeout``), closed on exit.

    ``settings`` are beatleader settings (``zk_auth``, ``zk_tls``, ...), as for the scheduler.
    """
    resolved = Settings.from_app(None, zk_hosts=hosts, session_timeout=timeout, **settings)
    client = make_client(resolved)
    client.start(timeout=connect_timeout)
    try:
        yield client
    finally:
        client.stop()
        client.close()


# -- ZooKeeper inspection ------------------------------------------------------------------------


def contender_prefix(root: str) -> str:
    """A contender node prefix under ``root``, named as the election names its own."""
    return f"{layout.election_path(root)}/{uuid.uuid4().hex}{CONTENDER_MARKER}"


def contenders(client: KazooClient, root: str) -> list[dict[str, Any]]:
    """The contender nodes under ``root`` in queue order (the first one leads).

    Each is the node's decoded JSON (``{}`` if unreadable) plus ``node`` (its name) and
    ``session_id`` (the owning session, ``stat.ephemeralOwner``).
    """
    path = layout.election_path(root)
    try:
        children = client.get_children(path)
    except NoNodeError:
        return []
    found = []
    for node in sorted_contenders(children):
        try:
            data, stat = client.get(f"{path}/{node}")
        except NoNodeError:  # its session ended while we were reading
            continue
        found.append({**decode_object(data), "node": node, "session_id": stat.ephemeralOwner})
    return found


def leader(client: KazooClient, root: str) -> dict[str, Any] | None:
    """The first contender, or None when nobody contends."""
    queue = contenders(client, root)
    return queue[0] if queue else None


def entry_state(client: KazooClient, root: str, name: str) -> dict[str, Any] | None:
    """The JSON stored for schedule entry ``name``; None when there is no node."""
    try:
        data, _ = client.get(layout.entry_path(root, name))
    except NoNodeError:
        return None
    return decode_object(data)
