"""Every public name by the path the README and docs give it, and the old module paths users import.

The package was reorganised into sub-packages (docs/design.md); nothing a user wrote may break:
the names below, the scheduler aliases and console entry points, ``python -m beatleader.cli``,
and the logger names the README documents.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from celery import beat

ROOT = Path(__file__).resolve().parent.parent

#: module path -> names it must keep offering.
PUBLIC = {
    "beatleader": ["Scheduler", "EmbeddedBeat", "Settings", "ConfigError", "__version__"],
    "beatleader.scheduler": ["Scheduler"],
    "beatleader.embedded": ["EmbeddedBeat"],
    "beatleader.dedup": ["install", "DedupPolicy", "DedupGuard", "REQUEUES_HEADER"],
    "beatleader.entries": [
        "add",
        "update",
        "remove",
        "pause",
        "resume",
        "run",
        "list_entries",
        "store",
        "EntryStore",
        "EntryInfo",
        "DefinitionError",
    ],
    "beatleader.django": ["DatabaseScheduler"],
    "beatleader.config": ["Settings", "ConfigError"],
    "beatleader.observe": ["Observer", "Observers"],
    "beatleader.cli": ["main", "celery_command"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_each_public_name_imports_from_its_documented_path(module: str) -> None:
    imported = import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(imported, name)]
    assert not missing, f"{module} lost {missing}"


def test_the_old_paths_are_the_same_objects() -> None:
    import beatleader
    from beatleader import dedup, embedded, scheduler
    from beatleader.beat.embedded import EmbeddedBeat
    from beatleader.beat.scheduler import Scheduler
    from beatleader.worker.guard import install

    assert scheduler.Scheduler is beatleader.Scheduler is Scheduler
    assert embedded.EmbeddedBeat is beatleader.EmbeddedBeat is EmbeddedBeat
    assert dedup.install is install


def test_the_scheduler_aliases_and_the_console_entry_points_load() -> None:
    import beatleader
    from beatleader.django import DatabaseScheduler

    schedulers = {ep.name: ep for ep in entry_points(group="celery.beat_schedulers")}
    assert schedulers["beatleader"].load() is beatleader.Scheduler
    assert schedulers["beatleader-django"].load() is DatabaseScheduler
    assert issubclass(beatleader.Scheduler, beat.Scheduler)
    scripts = {ep.name: ep for ep in entry_points(group="console_scripts")}
    assert callable(scripts["beatleader"].load())
    commands = {ep.name: ep for ep in entry_points(group="celery.commands")}
    assert commands["beatleader"].load().name == "beatleader"


def test_python_dash_m_beatleader_cli_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "beatleader.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "status" in done.stdout


def test_every_logger_the_readme_names_is_the_name_the_code_logs_under() -> None:
    table = ROOT.joinpath("README.md").read_text().split("logger | what it says", 1)[1]
    named = set(re.findall(r"^\s*\| `(beatleader\.\w+)` \|", table, re.MULTILINE))
    assert len(named) >= 8, named
    source = "\n".join(p.read_text() for p in (ROOT / "beatleader").rglob("*.py"))
    used = set(re.findall(r"""getLogger\(\s*["'](beatleader\.\w+)["']""", source))
    used |= set(re.findall(r"""^KAZOO_LOGGER = ["'](beatleader\.\w+)["']""", source, re.M))
    assert named <= used, f"documented loggers nothing logs under: {named - used}"
