"""The examples under ``examples/``, run as a user would: real servers in subprocesses.

Each server's workers are asked over HTTP (``GET /beat``, ``EmbeddedBeat.status()``) whether they
lead, and the election in ZooKeeper and the messages in the filesystem broker are checked against
their answers: one contender per serving process, exactly one leader, only the leader sends, a
SIGKILLed leader is replaced within the session timeout, and stopping the server leaves no node.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from beatleader.testing.localproc import LoggedProcess
from tests.harness import REPO_ROOT, FilesystemBroker, contenders, free_port, leader, wait_for

EXAMPLES = REPO_ROOT / "examples"
DJANGO_DIR = EXAMPLES / "django_app"
GUNICORN = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or "gunicorn"
#: Seconds; a SIGKILLed leader's node lasts this long, so failover takes about this long.
SESSION_TIMEOUT = 3.0
#: Generous bound for booting a server on a loaded two-core machine.
BOOT = 60.0
ORIGIN_PID = re.compile(r"^gen(\d+)@")


class WebServer(LoggedProcess):
    """A server command in its own process group, logging to a file, answering ``GET /beat``."""

    def close(self) -> None:
        """Kill whatever is left of the process group."""
        self.kill_group()


class Servers:
    """Starts web servers for one test and kills them all at teardown."""

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.started: list[WebServer] = []

    def __call__(
        self, *args: str, env: Mapping[str, str] | None = None, cwd: Path = REPO_ROOT
    ) -> WebServer:
        log_path = self.workdir / f"server-{len(self.started) + 1}.log"
        server = WebServer(args, log_path, cwd=cwd, env={**self.env, **(env or {})})
        self.started.append(server)
        return server

    def diagnostics(self) -> list[tuple[str, str]]:
        return [section for server in self.started for section in server.diagnostics()]

    def close(self) -> None:
        for server in self.started:
            server.close()


@pytest.fixture
def example_env(zk_server: Any, zk_root: str, broker_dir: Path) -> dict[str, str]:
    """What every example reads: this test's ZooKeeper root, the filesystem broker, a 1 s task."""
    return {
        **os.environ,
        "BEATLEADER_ZK_HOSTS": zk_server.hosts,
        "BEATLEADER_PATH": zk_root,
        "BEATLEADER_SESSION_TIMEOUT": str(SESSION_TIMEOUT),
        "EXAMPLE_BROKER_DIR": str(broker_dir),
        "EXAMPLE_INTERVAL": "1",
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def servers(tmp_path: Path, example_env: dict[str, str]) -> Iterator[Servers]:
    started = Servers(tmp_path, example_env)
    yield started
    started.close()


# -- asking the servers --------------------------------------------------------------------------


def _get_status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/beat", timeout=5) as response:
            status: dict[str, Any] = json.load(response)
            return status
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _survey(port: int, processes: int, attempts: int = 60) -> dict[int, dict[str, Any]]:
    """Ask ``GET /beat`` until ``processes`` distinct pids answered; pid -> latest status."""
    answers: dict[int, dict[str, Any]] = {}
    for _ in range(attempts):
        status = _get_status(port)
        if status is not None:
            answers[status["pid"]] = status
        if len(answers) >= processes:
            break
    return answers


def _one_leader(
    port: int, processes: int, zk_client: Any, zk_root: str
) -> dict[int, dict[str, Any]] | None:
    """The survey when it shows what must hold, else None.

    Every process contends once, exactly one says it leads, and it is first in ZooKeeper's queue.
    """
    answers = _survey(port, processes)
    pids = [c["pid"] for c in contenders(zk_client, zk_root)]
    leading = [pid for pid, status in answers.items() if status["leader"]]
    if len(answers) != processes or sorted(pids) != sorted(answers) or len(leading) != 1:
        return None
    return answers if pids[0] == leading[0] else None


def _leader_pid(answers: Mapping[int, Mapping[str, Any]]) -> int:
    return next(pid for pid, status in answers.items() if status["leader"])


def _senders(broker: FilesystemBroker) -> set[int]:
    """The pids that published the broker's messages (celery's ``origin`` header: gen<pid>@host)."""
    return {int(ORIGIN_PID.findall(m.headers["origin"])[0]) for m in broker.messages()}


def _dashboard_leader(port: int) -> str | None:
    """The leader pid the mounted dashboard (``/beatleader/``) shows, None when it does not."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/beatleader/", timeout=15) as page:
            found = re.search(r'id="leader" data-pid="(\d*)"', page.read().decode())
    except (OSError, urllib.error.URLError):
        return None
    return found.group(1) if found else None


def _check_dashboard(port: int, leader_pid: int) -> None:
    """The dashboard mounted at ``/beatleader/`` shows the leader; its links stay under it."""
    wait_for(
        lambda: _dashboard_leader(port) == str(leader_pid), 60, message="the dashboard's leader"
    )
    url = f"http://127.0.0.1:{port}/beatleader/static/dashboard.css"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200 and b"beatleader dashboard" in response.read()


def _check_server(
    server: WebServer, port: int, processes: int, zk_client: Any, zk_root: str, broker_dir: Path
) -> None:
    """One leader among ``processes``; only it sends; failover after SIGKILL; clean shutdown."""
    broker = FilesystemBroker(broker_dir)
    answers = wait_for(
        lambda: _one_leader(port, processes, zk_client, zk_root),
        BOOT,
        message=f"{processes} processes answer, contend once each, and exactly one leads",
    )
    first = _leader_pid(answers)
    _check_dashboard(port, first)
    wait_for(lambda: broker.count() >= 2, 20, message="the leader sends the periodic task")
    assert _senders(broker) == {first}

    os.kill(first, signal.SIGKILL)
    wait_for(
        lambda: (queue := leader(zk_client, zk_root)) is not None and queue["pid"] != first,
        SESSION_TIMEOUT + 10,
        message="another process is first in the queue within the session timeout",
    )
    answers = wait_for(
        lambda: _one_leader(port, processes, zk_client, zk_root),
        BOOT,
        message="again exactly one leader, the killed one replaced",
    )
    second = _leader_pid(answers)
    assert second != first
    wait_for(lambda: second in _senders(broker), 20, message="the new leader sends")
    assert _senders(broker) == {first, second}
    # at least once: the killed leader's last run may be republished (same id) by its successor
    assert len(broker.duplicates()) <= 1

    server.terminate()
    server.wait_exit(30)
    wait_for(lambda: contenders(zk_client, zk_root) == [], 1, message="no node left behind")


# -- the examples --------------------------------------------------------------------------------


def _gunicorn(port: int, *args: str) -> list[str]:
    """gunicorn with the example configuration, on ``port``, without a control socket in ~."""
    config = str(EXAMPLES / "gunicorn.conf.py")
    return [GUNICORN, "-c", config, "--no-control-socket", "-b", f"127.0.0.1:{port}", *args]


def test_gunicorn_flask_three_workers(servers, zk_client, zk_root, broker_dir) -> None:
    port = free_port()
    server = servers(*_gunicorn(port, "examples.flask_app:create_app()"))
    _check_server(server, port, 3, zk_client, zk_root, broker_dir)


def test_uvicorn_fastapi_two_workers(servers, zk_client, zk_root, broker_dir) -> None:
    port = free_port()
    server = servers(
        sys.executable,
        "-m",
        "uvicorn",
        "--workers",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "examples.fastapi_app:app",
    )
    _check_server(server, port, 2, zk_client, zk_root, broker_dir)


def test_gunicorn_django_two_workers(servers, zk_client, zk_root, broker_dir) -> None:
    """``ready()`` and the gunicorn hook both start the beat in each worker: still one each."""
    port = free_port()
    server = servers(
        *_gunicorn(port, "-w", "2", "--chdir", str(DJANGO_DIR), "mysite.wsgi"),
        env={"EXAMPLE_CELERY_APP": "mysite.celery:app"},
    )
    _check_server(server, port, 2, zk_client, zk_root, broker_dir)


def test_django_runserver_contends_only_in_the_serving_child(servers, zk_client, zk_root) -> None:
    """The autoreloader's watcher process never contends; SIGTERM to the child stops cleanly."""
    port = free_port()
    server = servers(
        sys.executable,
        str(DJANGO_DIR / "manage.py"),
        "runserver",
        f"127.0.0.1:{port}",
        env={"BEATLEADER_SESSION_TIMEOUT": "30"},  # a node gone at once was released, not expired
    )
    answers = wait_for(
        lambda: _one_leader(port, 1, zk_client, zk_root), BOOT, message="the child serves, leads"
    )
    (child,) = answers
    assert child != server.pid
    _check_dashboard(port, child)
    assert [c["pid"] for c in contenders(zk_client, zk_root)] == [child]

    os.kill(child, signal.SIGTERM)
    server.wait_exit(30)  # the watcher exits with its child
    wait_for(lambda: contenders(zk_client, zk_root) == [], 1, message="the child released it")


def test_plain_celery_beat_twice(servers, zk_client, zk_root, broker_dir) -> None:
    """Both documented ways to run the plain example; exactly one of the two leads and sends."""
    from_root = servers(
        sys.executable, "-m", "celery", "-A", "examples.plain.proj", "beat", "-S", "beatleader"
    )
    from_plain = servers(
        sys.executable,
        "-m",
        "celery",
        "-A",
        "proj",
        "beat",
        "-S",
        "beatleader.Scheduler",
        cwd=EXAMPLES / "plain",
    )
    wait_for(
        lambda: (
            sorted(c["pid"] for c in contenders(zk_client, zk_root))
            == sorted([from_root.pid, from_plain.pid])
        ),
        BOOT,
        message="both beats contend",
    )
    first = leader(zk_client, zk_root)
    assert first is not None
    broker = FilesystemBroker(broker_dir)
    wait_for(lambda: broker.count() >= 2, 20, message="the leader sends the periodic task")
    assert _senders(broker) == {first["pid"]}

    for beat in (from_root, from_plain):
        beat.terminate()
        beat.wait_exit(30)
    assert contenders(zk_client, zk_root) == []
