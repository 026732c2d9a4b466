"""A plain Celery project whose beat runs on every instance; ZooKeeper elects the one that sends.

Run on each instance (from the repository root, or with ``examples/plain`` as the working
directory and ``-A proj``)::

    celery -A examples.plain.proj beat -S beatleader.Scheduler

Settings come from the environment:

* ``BEATLEADER_ZK_HOSTS``, ``BEATLEADER_PATH``, ``BEATLEADER_SESSION_TIMEOUT``: read by beatleader
  itself (see ``beatleader/config.py``).
* ``CELERY_BROKER_URL``: the broker, read by Celery itself; or ``EXAMPLE_BROKER_DIR``: a folder for
  kombu's filesystem transport, to try this without a broker.
* ``EXAMPLE_INTERVAL``: seconds between two runs of the example task (default 10).
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("proj")

broker_dir = os.environ.get("EXAMPLE_BROKER_DIR")
if broker_dir:
    app.conf.broker_url = "filesystem://"
    app.conf.broker_transport_options = {
        "data_folder_in": broker_dir,
        "data_folder_out": broker_dir,
    }

app.conf.beat_schedule = {
    "heartbeat": {
        "task": "proj.heartbeat",
        "schedule": float(os.environ.get("EXAMPLE_INTERVAL", "10")),
    },
}


@app.task(name="proj.heartbeat")
def heartbeat() -> str:
    """The example periodic task: says which worker ran it."""
    return f"heartbeat run by pid {os.getpid()}"
