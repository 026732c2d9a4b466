"""docs/runtime-entries.md, run as written, and the README section that points to it.

The doc's ``proj`` project is made here (its ``beat_schedule`` is the doc's own snippet); its
shell lines, its console examples (command, exit 2 and the exact line) and its Python block then
run against the suite's real ZooKeeper. Only the environment says where ZooKeeper is
(``BEATLEADER_ZK_HOSTS``, ``BEATLEADER_PATH``), as the doc says it may.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from beatleader.zk import layout
from tests.harness import REPO_ROOT

DOC = REPO_ROOT / "docs" / "runtime-entries.md"

TASKS = """
from proj.celery import app


@app.task(name="proj.tasks.report")
def report(*args, **kwargs):
    return ["report", args, kwargs]


@app.task(name="proj.tasks.poll")
def poll():
    return "poll"


@app.task(name="proj.tasks.cleanup")
def cleanup():
    return "cleanup"
"""


def blocks(language: str) -> list[str]:
    found = re.findall(r"^```(\w*)\n(.*?)^```", DOC.read_text(), re.M | re.S)
    return [body for lang, body in found if lang == language]


@pytest.fixture
def env(tmp_path: Path, zk_server: Any, zk_root: str) -> dict[str, str]:
    """The doc's project in ``tmp_path``, importable; ZooKeeper from the environment."""
    package = tmp_path / "proj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    header = "from celery import Celery\nfrom celery.schedules import crontab\n\n"
    header += 'app = Celery("proj", include=["proj.tasks"])\n'
    (package / "celery.py").write_text(header + blocks("python")[0])
    (package / "tasks.py").write_text(TASKS)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(tmp_path)]),
        "BEATLEADER_ZK_HOSTS": zk_server.hosts,
        "BEATLEADER_PATH": zk_root,
    }


def shell(line: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a doc line; ``beatleader``/``celery`` as modules of this interpreter."""
    program, *args = shlex.split(line)
    module = {"beatleader": "beatleader.cli", "celery": "celery"}[program]
    argv = [sys.executable, "-m", module, *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def test_the_commands_work_as_written(env, tmp_path, zk_client, zk_root) -> None:
    lines = [line for line in blocks("sh")[0].splitlines() if line.strip()]
    assert len(lines) == 15
    outputs = []
    for line in lines:
        done = shell(line, env, tmp_path)
        assert (done.returncode, done.stderr) == (0, ""), (line, done.stdout, done.stderr)
        outputs.append(done.stdout)
    definitions = sorted(zk_client.get_children(layout.definitions_path(zk_root)))
    assert definitions == ["poll-feeds", "report-acme"]
    poll = json.loads(zk_client.get(layout.definition_path(zk_root, "poll-feeds"))[0])
    assert poll["schedule"] == {"every": 300.0} and poll["enabled"] is True
    policy = {"overlap": "skip", "pause_after_failures": 3}
    assert poll["options"] == {
        "queue": "feeds",
        "expires": 60.0,
        "priority": 3,
        "beatleader": policy,
    }
    acme = json.loads(zk_client.get(layout.definition_path(zk_root, "report-acme"))[0])
    assert acme["schedule"] == {"crontab": "0 7 * * 1-5", "timezone": "Europe/Paris"}
    assert acme["kwargs"] == {"customer": "acme"}
    assert zk_client.get_children(layout.paused_path(zk_root)) == []
    requests = zk_client.get_children(layout.requests_path(zk_root))
    assert [layout.request_entry_name(r) for r in requests] == ["nightly-cleanup"]
    backfill = outputs[7].splitlines()  # a week of the 03:00 static crontab, dry run
    assert backfill[:-1] == [f"2026-11-0{day}T03:00:00+00:00" for day in range(1, 8)]
    assert backfill[-1] == "7 run(s) of nightly-cleanup (dry run: nothing written)"
    assert not zk_client.exists(layout.backfills_path(zk_root))
    table = outputs[10]  # entry list, before migrate-once is removed
    assert "migrate-once" in table and "nightly-cleanup" in table and "static" in table
    assert outputs[12].startswith("history of poll-feeds") and "(no runs)" in outputs[12]
    listed = {e["name"]: e for e in json.loads(outputs[14])}
    assert set(listed) == {"nightly-cleanup", "poll-feeds", "report-acme"}
    assert listed["nightly-cleanup"]["pending_runs"] == 1


def test_the_console_examples_print_what_the_doc_shows(env, tmp_path) -> None:
    text = blocks("console")[0]
    examples = re.findall(r"^\$ (.*)\n((?:[^$].*\n)+)", text, re.M)
    assert len(examples) == 5
    for command, expected in examples:
        done = shell(command, env, tmp_path)
        assert (done.returncode, done.stdout, done.stderr) == (2, "", expected), command


def test_the_python_example_runs(env, tmp_path, zk_client, zk_root) -> None:
    code = blocks("python")[1]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("nightly-cleanup static enabled crontab 0 3 * * * ")
    assert lines[1].startswith(
        "report-globex runtime enabled crontab 30 6 * * * (America/New_York)"
    )
    assert lines[-1] == (
        "cannot add 'nightly-cleanup': a static beat_schedule entry has that name "
        "(static entries win; choose another name)"
    )
    assert zk_client.exists(layout.definition_path(zk_root, "report-globex")) is None
    assert len(zk_client.get_children(layout.requests_path(zk_root))) == 1


def test_the_readme_points_to_the_doc() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index("## Changing the schedule at runtime\n")
    section = readme[start : readme.index("\n## ", start + 1)]
    assert "docs/runtime-entries.md" in section
    for line in re.findall(r"^\s*(beatleader entry .*)$", section, re.M):
        assert line.strip() in DOC.read_text(), line
