"""``examples/django_beat/`` run as its README says: the commands of its marked blocks, as written.

The first block (migrate, createsuperuser, loaddata, three ``celery beat -S
beatleader.django.DatabaseScheduler``, a worker, runserver) must give one leader that alone sends
the row's task, which the worker runs, an admin that answers, and ``beatleader status -A
beatsite`` listing the row; the second (gunicorn with ``EXAMPLE_EMBEDDED_BEAT=1``) must give one
leader among the workers, only it sending, and a failover after SIGKILL (``tests/test_examples``).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from beatleader.testing.localproc import LoggedProcess
from tests.harness import REPO_ROOT, contenders, entry_state, free_port, leader, wait_for

BOOT = 60.0

EXAMPLE = REPO_ROOT / "examples" / "django_beat"
COMMANDS_MARKER = "<!-- commands:"


def readme_commands(marker: str = COMMANDS_MARKER) -> list[str]:
    """The shell lines of the README's code block after ``marker``, as a user would paste them."""
    text = (EXAMPLE / "README.md").read_text()
    block = text[text.index(marker) :].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


class Started:
    """The example's background commands; all of them killed at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[LoggedProcess] = []

    def __call__(self, command: str, env: dict[str, str]) -> LoggedProcess:
        number = len(self.processes) + 1
        process = LoggedProcess(
            ["sh", "-c", f"exec {command}"],
            self.workdir / f"example-{number}.log",
            cwd=EXAMPLE,
            env=env,
            name=f"example-{number}: {command}",
        )
        self.processes.append(process)
        return process

    def diagnostics(self) -> list[tuple[str, str]]:
        return [section for p in self.processes for section in p.diagnostics()]

    def close(self) -> None:
        for process in self.processes:
            process.kill_group()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Started]:
    processes = Started(tmp_path)
    yield processes
    processes.close()


def example_env(tmp_path: Path, zk_server: Any, zk_root: str, broker_dir: Path) -> dict[str, str]:
    """The environment the example's README sets, pointed at the suite's servers."""
    return {
        **os.environ,
        "BEATLEADER_ZK_HOSTS": zk_server.hosts,
        "BEATLEADER_PATH": zk_root,
        "BEATLEADER_SESSION_TIMEOUT": "3",
        "EXAMPLE_BROKER_DIR": str(broker_dir),
        "EXAMPLE_SQLITE": str(tmp_path / "example.sqlite3"),
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
    }


def test_the_example_runs_as_its_readme_says(
    started, tmp_path, zk_server, zk_client, zk_root, broker_dir
) -> None:
    port = free_port()
    env = example_env(tmp_path, zk_server, zk_root, broker_dir)
    beats: list[LoggedProcess] = []
    worker = server = None
    for command in readme_commands():
        command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        if not command.endswith("&"):
            result = subprocess.run(
                ["sh", "-c", command], cwd=EXAMPLE, env=env, capture_output=True, text=True
            )
            assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
            continue
        process = started(command.removesuffix("&").strip(), env)
        if " beat " in command:
            beats.append(process)
        elif " worker " in command:
            worker = process
        else:
            server = process
    assert len(beats) == 3 and worker is not None and server is not None

    def hellos() -> int:
        return len(re.findall(r"Task beatsite\.hello\[\S+\] succeeded", worker.log()))

    wait_for(lambda: hellos() >= 3, BOOT, message="the worker runs the row's task")
    queue = wait_for(lambda: len(contenders(zk_client, zk_root)) == 3, BOOT, message="3 beats")
    assert queue
    first = leader(zk_client, zk_root)
    assert first is not None
    senders = [b.pid for b in beats if "Sending due task hello every 3 s" in b.log()]
    assert senders == [first["pid"]]
    assert entry_state(zk_client, zk_root, "hello every 3 s")["written_by"] == first["identity"]
    with sqlite3.connect(env["EXAMPLE_SQLITE"]) as db:
        admin = db.execute("select is_superuser from auth_user where username = 'admin'")
        assert admin.fetchall() == [(1,)]
    login = f"http://127.0.0.1:{port}/admin/login/"
    wait_for(lambda: _http_status(login) == 200, BOOT, message="the admin answers")
    status = subprocess.run(
        [sys.executable, "-m", "beatleader.cli", "status", "-A", "beatsite", "--json"],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    listed = {e["name"]: e for e in json.loads(status.stdout)["entries"]}
    assert listed["hello every 3 s"]["schedule"] == "every 3s"


def test_the_example_embedded_in_gunicorn(
    tmp_path, zk_server, zk_client, zk_root, broker_dir
) -> None:
    """``ready()`` starts an EmbeddedBeat with the DatabaseScheduler in each gunicorn worker."""
    from tests.test_examples import WebServer, _check_server

    env = example_env(tmp_path, zk_server, zk_root, broker_dir)
    for command in readme_commands()[:3]:  # migrate, createsuperuser, loaddata
        subprocess.run(["sh", "-c", command], cwd=EXAMPLE, env=env, check=True, timeout=120)
    (command,) = readme_commands("<!-- embedded:")
    port = free_port()
    command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}").removesuffix("&").strip()
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    command = command.replace(" gunicorn ", f" {gunicorn} ")
    server = WebServer(
        ["sh", "-c", f"exec env {command}"], tmp_path / "gunicorn.log", cwd=EXAMPLE, env=env
    )
    try:
        _check_server(server, port, 2, zk_client, zk_root, broker_dir)
    finally:
        server.close()


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return None
