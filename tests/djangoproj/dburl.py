"""``TEST_DATABASE_URL`` -> a Django ``DATABASES`` entry (PostgreSQL or SQLite; nothing else)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit


def database(url: str) -> dict[str, Any]:
    """``postgresql://user@host:port/name`` or ``sqlite:////absolute/path`` as Django wants it."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        options: dict[str, Any] = {"timeout": 30}
        if _django_version() >= (5, 1):
            # several processes write one file (the leader, the test, the admin): a deferred
            # transaction that turns into a write fails at once with "database is locked"
            # whatever the timeout; IMMEDIATE takes the lock at BEGIN and waits for it
            options["transaction_mode"] = "IMMEDIATE"
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": parts.path or ":memory:",
            "OPTIONS": options,
        }
    if parts.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": parts.path.lstrip("/"),
            "USER": parts.username or "",
            "PASSWORD": parts.password or "",
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            # which process a connection belongs to (pg_stat_activity): followers open none
            "OPTIONS": {"connect_timeout": 5, "application_name": f"pid-{os.getpid()}"},
        }
    raise ValueError(f"TEST_DATABASE_URL must be postgresql://... or sqlite:///..., not {url!r}")


def _django_version() -> tuple[int, ...]:
    import django

    return tuple(django.VERSION[:2])
