"""Django in the test process, over a real PostgreSQL and SQLite, and helpers for rows.

The fixtures ``databases`` (session) and ``use_db`` (``tests/conftest.py``) configure Django once
per test process: alias ``pg`` (``beatleader.testing.localpg``) and ``default`` (SQLite), both
migrated. The helpers edit ``PeriodicTask`` rows through Django's ORM, as the admin does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beatleader.testing.localpg import LocalPostgres
from tests.djangoproj.dburl import database


class Router:
    """Sends this process's ORM to the database the current test uses."""

    alias = "default"

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return Router.alias

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return Router.alias

    def allow_relation(self, *objects: Any, **hints: Any) -> bool:
        return True

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return True


@dataclass
class Databases:
    urls: dict[str, str]
    postgres: LocalPostgres


@contextmanager
def configured_django(folder: Path) -> Iterator[Databases]:
    """Django in this process over both databases (aliases ``pg`` and ``default``: SQLite)."""
    import django
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    with LocalPostgres() as pg:
        urls = {"pg": pg.url, "default": f"sqlite:///{folder}/db.sqlite3"}
        assert not settings.configured, "Django is configured outside tests/django_support.py"
        settings.configure(
            SECRET_KEY="beatleader-tests-only",
            INSTALLED_APPS=["django_celery_beat"],
            DATABASES={alias: database(url) for alias, url in urls.items()},
            DATABASE_ROUTERS=[Router()],
            USE_TZ=True,
            TIME_ZONE="UTC",
            DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        )
        django.setup()
        for alias in urls:
            call_command("migrate", database=alias, verbosity=0, interactive=False)
        try:
            yield Databases(urls, pg)
        finally:
            connections.close_all()


def use(databases: Databases, alias: str) -> str:
    """Route the ORM to ``alias``, empty its periodic tasks; returns its URL."""
    from django_celery_beat.models import PeriodicTask

    Router.alias = alias
    PeriodicTask.objects.all().delete()
    return databases.urls[alias]


def add_row(name: str, every: float | None = None, **fields: Any) -> Any:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    if every is not None:
        found, _ = IntervalSchedule.objects.get_or_create(every=every, period="seconds")
        fields["interval"] = found
    fields.setdefault("args", json.dumps([name]))
    fields.setdefault("task", "tests.app.record")
    return PeriodicTask.objects.create(name=name, **fields)


def row(name: str) -> Any:
    from django_celery_beat.models import PeriodicTask

    return PeriodicTask.objects.get(name=name)


def edit_row(name: str, **fields: Any) -> float:
    """Save the row as the admin does (a full save); returns the monotonic time of the save."""
    model = row(name)
    for field, value in fields.items():
        setattr(model, field, value)
    model.save()
    return time.monotonic()


def row_names() -> set[str]:
    from django_celery_beat.models import PeriodicTask

    return set(PeriodicTask.objects.values_list("name", flat=True))
