"""The project's Celery app, configured from Django settings (``CELERY_*``), as usual.

``beatleader.dedup.install(app)`` makes the workers execute each periodic run once, even when a
failover publishes its last run again (same task id).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from beatleader.worker import guard as dedup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "beatsite.settings")

app = Celery("beatsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
dedup.install(app)


@app.task(name="beatsite.hello", bind=True)
def hello(self: Any, who: str = "world") -> str:
    """The example periodic task; its row is in ``fixtures/hello.json``."""
    return f"hello {who} (run {self.request.id})"
