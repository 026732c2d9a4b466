"""Helpers of the security tests (tests/test_security*.py): settings as env or flags, the CLI,
the one-line failure checks, walking a tree."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from kazoo.client import KazooClient

from beatleader.testing.pki import TestPki
from beatleader.zk import layout
from tests.cluster import ENTRY
from tests.harness import wait_for

APP_PASSWORD = "app-Secret-1"
AUTH = f"digest:app:{APP_PASSWORD}"
SASL_AUTH = f"sasl:app:{APP_PASSWORD}"
#: A named failure must come at once, not after the CLI's --timeout.
QUICK = 4.0
CLI_TIMEOUT = "8"


def tls_settings(pki: TestPki, **changes: str) -> dict[str, str]:
    """Settings (names as in Settings.from_app) for the module's TLS server."""
    return {
        "zk_tls": "true",
        "zk_tls_ca": str(pki.ca.cert),
        "zk_tls_cert": str(pki.client.cert),
        "zk_tls_key": str(pki.client.key),
        **changes,
    }


def as_env(settings: dict[str, str]) -> dict[str, str]:
    return {f"BEATLEADER_{name.upper()}": value for name, value in settings.items()}


def as_flags(settings: dict[str, str]) -> list[str]:
    flags = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if value in ("true", "false"):
            flags.append(flag if value == "true" else flag.replace("--zk", "--no-zk"))
        else:
            flags += [flag, value]
    return flags


def cli(hosts: str, root: str, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    command = [sys.executable, "-m", "beatleader.cli", *args, "--zk-hosts", hosts, "--path", root]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    return done, time.monotonic() - started


def assert_named_failure(
    done: subprocess.CompletedProcess[str], elapsed: float, *parts: str
) -> None:
    """Exit 2, one line ``beatleader: ...`` naming the cause, quickly, no traceback."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("beatleader: "), done.stderr
    assert "unreachable" not in lines[0]
    for part in parts:
        assert part in lines[0], lines[0]
    assert elapsed < QUICK, f"took {elapsed:.1f} s"


def assert_beat_stops_with_one_line(beat: Any, *parts: str) -> str:
    """The beat exits non-zero, its output names the cause in one line, no traceback."""
    wait_for(lambda: not beat.alive, 30, message=f"{beat.name} still running")
    log = beat.log()
    assert beat.returncode not in (0, None), log
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if "beatleader: " in line and parts[0] in line]
    assert len(lines) == 1, log  # celery shows the SystemExit message as a WARNING line
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def tree(client: KazooClient, path: str) -> list[str]:
    """``path`` and every node below it."""
    nodes = [path]
    for child in client.get_children(path):
        nodes += tree(client, f"{path}/{child}")
    return nodes


def kinds_of_nodes(client: KazooClient, root: str) -> dict[str, str]:
    """One node of every kind beatleader creates: root, election, contender, entries, ..."""
    election, entries = layout.election_path(root), layout.entries_path(root)
    schedules = f"{root}/{layout.SCHEDULES}"
    return {
        "root": root,
        "election": election,
        "contender": f"{election}/{client.get_children(election)[0]}",
        "entries": entries,
        "entry": layout.entry_path(root, ENTRY),
        "schedules": schedules,
        "schedule": f"{schedules}/{client.get_children(schedules)[0]}",
    }
