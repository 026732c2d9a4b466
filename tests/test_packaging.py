"""The published artifacts: what the wheel and the sdist contain, and the version in one place.

Builds both from a copy of the working tree with ``python -m build --no-isolation`` (the ``build``
and ``setuptools>=77`` of the dev extra), so the checkout is left untouched.
"""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
from click.testing import CliRunner

import beatleader
from beatleader.cli.main import celery_command, cli
from tests.harness import REPO_ROOT

_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", "build", "dist", "*.egg-info", ".*_cache", "*.db", "control"
)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    source = tmp_path_factory.mktemp("source") / "beatleader"
    shutil.copytree(REPO_ROOT, source, ignore=_NOT_SOURCE)
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    yield out


def _wheel(dist: Path) -> zipfile.ZipFile:
    (wheel,) = dist.glob("*.whl")
    return zipfile.ZipFile(wheel)


def _metadata(dist: Path) -> Message:
    with _wheel(dist) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(wheel.read(name))


def test_the_wheel_ships_the_package_without_test_tooling(dist: Path) -> None:
    with _wheel(dist) as wheel:
        names = set(wheel.namelist())
        info = f"beatleader-{beatleader.__version__}.dist-info"
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    modules = {n for n in names if n.startswith("beatleader/")}
    assert {
        "beatleader/py.typed",
        "beatleader/observe/metrics.py",
        "beatleader/scheduler.py",
    } <= modules
    shipped = {
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / "beatleader").rglob("*.py")
        if "testing" not in path.relative_to(REPO_ROOT / "beatleader").parts
    }
    assert sorted(shipped - modules) == []  # every module of every package, sub-packages too
    assert {"beatleader/django/__init__.py", "beatleader/django/scheduler.py"} <= modules
    # the dashboard's static files (no CDN: the pages load them from the package)
    assert {"beatleader/web/static/dashboard.css", "beatleader/web/static/dashboard.js"} <= names
    assert not [n for n in names if n.startswith(("beatleader/testing", "tests/", "scripts/"))]
    assert f"{info}/licenses/LICENSE" in names
    for line in (
        "beatleader = beatleader.cli:main",
        "beatleader = beatleader.cli:celery_command",
        "beatleader = beatleader.scheduler:Scheduler",
        "beatleader-django = beatleader.django:DatabaseScheduler",
    ):
        assert line in entry_points
    for group in ("console_scripts", "celery.commands", "celery.beat_schedulers"):
        assert f"[{group}]" in entry_points


def test_the_metadata_has_license_version_classifiers_and_extras(dist: Path) -> None:
    meta = _metadata(dist)
    assert meta["Version"] == beatleader.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert "Framework :: Celery" in meta.get_all("Classifier")
    assert set(meta.get_all("Provides-Extra")) >= {
        "prometheus",
        "sasl",
        "test",
        "examples",
        "bench",
        "dev",
        "web",
    }
    requires = meta.get_all("Requires-Dist")
    prometheus = [r for r in requires if r.startswith("prometheus_client")]
    assert prometheus and all('extra == "prometheus"' in r for r in prometheus)
    assert meta["Description-Content-Type"] == "text/markdown"


def test_the_sdist_ships_no_tests_and_no_test_tooling(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml"} <= names
    assert "beatleader/scheduler.py" in names
    assert not [n for n in names if n.startswith(("tests", "beatleader/testing", "scripts"))]


def test_the_version_is_written_once() -> None:
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert beatleader.__version__ not in pyproject
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text()
    assert f"## {beatleader.__version__}" in changelog


@pytest.mark.parametrize("command", [cli, celery_command])
def test_version_option(command) -> None:
    result = CliRunner().invoke(command, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"beatleader, version {beatleader.__version__}\n"


def test_the_lowest_celery_script_pins_the_floors_pyproject_declares() -> None:
    script = (REPO_ROOT / "scripts" / "test-lowest-celery.sh").read_text()
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    for name in ("celery", "kazoo"):
        floor = next(
            line.split(">=")[1].strip('",')
            for line in pyproject.splitlines()
            if line.strip().startswith(f'"{name}>=')
        )
        assert f"{name}=={floor}" in script or f"{name}=={floor}.0" in script, (name, floor)
