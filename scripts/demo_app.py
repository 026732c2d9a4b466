"""The demo's Celery app: two periodic entries whose task says which beat instance sent it.

Run with this folder on ``PYTHONPATH`` (the demo, the native topology and the Docker image do)::

    celery -A demo_app beat -S beatleader.Scheduler      # on every instance
    celery -A demo_app worker --pool=solo                # one worker

Configured by environment variables, read at import:

``DEMO_BROKER_URL``
    the broker (e.g. ``redis://redis:6379/0``); when unset, ``DEMO_BROKER_DIR`` is used.
``DEMO_BROKER_DIR``
    a folder for kombu's filesystem transport (no broker server); consumed messages are kept in
    ``processed/`` and the control exchange lives in ``control/``, both inside the folder.
``DEMO_EXECUTION_LOG``
    when set, every execution appends one JSON line there (see :func:`append_execution`).
``DEMO_FAST_INTERVAL`` / ``DEMO_SLOW_INTERVAL``
    seconds between runs of the entries ``every-1s`` / ``every-5s`` (defaults 1 and 5).

beatleader's own settings come from ``BEATLEADER_*`` variables (see ``beatleader/config.py``).

``beatleader.dedup.install(app)`` guards the task: a run republished after a failover executes once.

Guarantees: every execution logs one line ``ran <entry> id=<task id> sent-by=<origin>`` and, when
the same task id runs twice in this worker process, one ``DUPLICATE`` warning (with ``--pool=solo``
a worker is one process, so that catches every duplicate it receives).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery import Celery, Task

import beatleader.worker.guard

APP_NAME = "demo"
TASK_NAME = "demo_app.tick"
FAST_ENTRY = "every-1s"
SLOW_ENTRY = "every-5s"
#: How often a worker polls the filesystem broker (kombu's default is 1 s).
FILESYSTEM_POLLING_INTERVAL = 0.1

logger = logging.getLogger(__name__)
_seen_task_ids: set[str] = set()


def broker_config(environ: Mapping[str, str]) -> dict[str, Any]:
    """Celery settings for the broker ``environ`` names (memory:// when it names none)."""
    url = environ.get("DEMO_BROKER_URL")
    folder = environ.get("DEMO_BROKER_DIR")
    if url:
        return {"broker_url": url}
    if not folder:
        return {"broker_url": "memory://"}
    base = Path(folder)
    (base / "processed").mkdir(parents=True, exist_ok=True)
    from beatleader.testing import fstransport  # a checkout's tooling: not in the Docker image

    fstransport.register()  # kombu's filesystem transport, with atomic puts
    return {
        "broker_url": f"{fstransport.SCHEME}://",
        "broker_transport_options": {
            "data_folder_in": str(base),
            "data_folder_out": str(base),
            "store_processed": True,
            "processed_folder": str(base / "processed"),
            "control_folder": str(base / "control"),
            "polling_interval": FILESYSTEM_POLLING_INTERVAL,
        },
    }


def beat_schedule(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Two entries of the same task, each passing its own name."""
    fast = float(environ.get("DEMO_FAST_INTERVAL", "1"))
    slow = float(environ.get("DEMO_SLOW_INTERVAL", "5"))
    return {
        FAST_ENTRY: {"task": TASK_NAME, "schedule": fast, "args": [FAST_ENTRY]},
        SLOW_ENTRY: {"task": TASK_NAME, "schedule": slow, "args": [SLOW_ENTRY]},
    }


app = Celery(APP_NAME)
app.conf.update(
    timezone="UTC",
    enable_utc=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
    beat_schedule=beat_schedule(os.environ),
    **broker_config(os.environ),
)
# The worker guard: each run executes once, also when a new leader republishes the last run of a
# leader that crashed (publication is at least once). Workers reach ZooKeeper like the beats do.
beatleader.worker.guard.install(app)


@app.task(name=TASK_NAME, bind=True)
def tick(self: Task, entry: str) -> str:
    """Record who sent this run of ``entry``; warn when this task id already ran here."""
    task_id = str(self.request.id)
    origin = str(self.request.origin or "?")
    if task_id in _seen_task_ids:
        logger.warning("DUPLICATE %s id=%s sent-by=%s", entry, task_id, origin)
    _seen_task_ids.add(task_id)
    logger.info("ran %s id=%s sent-by=%s", entry, task_id, origin)
    append_execution(os.environ.get("DEMO_EXECUTION_LOG"), entry, task_id, origin)
    return origin


def append_execution(path: str | None, entry: str, task_id: str, origin: str) -> None:
    """One atomic O_APPEND write of ``{"entry", "id", "origin", "ts"}`` to ``path`` (if set)."""
    if not path:
        return
    line = json.dumps({"entry": entry, "id": task_id, "origin": origin, "ts": time.time()})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
