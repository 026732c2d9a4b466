"""docs/compatibility.md matches the code: a row for every public attribute of celery's Scheduler.

Runs against the celery version installed (the newest in scripts/test.sh, the lowest in
scripts/test-lowest-celery.sh), so an attribute a celery release adds must get a row. A row that
says ``same`` must be celery's own attribute, not an override; every test the page names exists.
"""

from __future__ import annotations

import re
from pathlib import Path

from celery import beat

import beatleader
from beatleader.django import DatabaseScheduler

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "compatibility.md"


def _api_rows() -> dict[str, str]:
    """Attribute -> its beatleader cell, from the first table of the page."""
    text = PAGE.read_text()
    section = text.split("## The `celery.beat.Scheduler` API", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        match = re.match(r"\| `(\w+)` \| ([^|]*) \|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def _public_attributes() -> list[str]:
    return [name for name in vars(beat.Scheduler) if not name.startswith("_")]


def _overrides(cls: type, name: str) -> bool:
    """Whether a class between ``cls`` and celery's ``Scheduler`` defines ``name``."""
    for klass in cls.__mro__:
        if klass is beat.Scheduler:
            return False
        if name in vars(klass):
            return True
    return False


def test_every_public_attribute_of_celerys_scheduler_has_a_row() -> None:
    rows = _api_rows()
    missing = [name for name in _public_attributes() if name not in rows]
    assert not missing, f"docs/compatibility.md has no row for {missing}"
    unknown = [name for name in rows if not hasattr(beat.Scheduler, name)]
    assert not unknown, f"rows for attributes celery's Scheduler does not have: {unknown}"


def test_a_row_that_says_same_is_celerys_own_attribute() -> None:
    for name, cell in _api_rows().items():
        if hasattr(beat.Scheduler, name):
            overridden = _overrides(beatleader.Scheduler, name)
            assert overridden == (not cell.startswith("same")), (name, cell)


def test_the_django_scheduler_overrides_no_more_than_the_page_says() -> None:
    """Its own (docs/compatibility.md, django-celery-beat table): the entry class and its hooks,
    the default entries as rows, the follower's view of the rows, and its lifecycle."""
    own = {
        "Entry",
        "setup_schedule",
        "close",
        "sync",
        "tick",
        "_maybe_entry",
        "add",
        "update_from_dict",
        "merge_inplace",
        "install_default_entries",
        "get_schedule",
        "schedule",
        "all_as_schedule",
    }
    for name in _public_attributes():
        if name not in own:
            assert _overrides(DatabaseScheduler, name) == _overrides(beatleader.Scheduler, name), (
                name
            )


def test_every_test_the_page_names_exists() -> None:
    named = set(re.findall(r"`(test_\w+)`", PAGE.read_text()))
    assert named
    sources = "\n".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py"))
    defined = set(re.findall(r"^def (test_\w+)\(", sources, re.MULTILINE))
    assert not named - defined, (
        f"docs/compatibility.md names tests that do not exist: {named - defined}"
    )
