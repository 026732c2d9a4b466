"""``TEST_DATABASE_URL`` -> a Django ``DATABASES`` entry (PostgreSQL or SQLite; nothing else)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit


def database(url: str) -> dict[str, Any]:
    """``postgresql://user@host:port/name`` or ``sqlite:////absolute/path`` as Django wants it."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": parts.path or ":memory:",
            "OPTIONS": {"timeout": 30},
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
