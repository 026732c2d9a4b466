"""The project's Celery app, configured from Django settings (``CELERY_*``), as usual."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

app = Celery("mysite")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.task(name="mysite.heartbeat")
def heartbeat() -> str:
    """The example periodic task: says which worker ran it."""
    return f"heartbeat run by pid {os.getpid()}"
