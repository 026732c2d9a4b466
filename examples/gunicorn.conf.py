"""gunicorn configuration running one beatleader ``EmbeddedBeat`` in each worker.

    gunicorn -c examples/gunicorn.conf.py 'examples.flask_app:create_app()'

A ZooKeeper session does not survive a fork, so the beat is started in ``post_fork``: in the
worker, after it was forked from the master, never in the master. (With ``preload_app = True`` the
app module is imported in the master: do not start the beat at import or in the app factory then,
only here.) ``worker_exit`` stops it, which hands leadership to another process at once. Each worker
is one contender; one of them leads.

``EXAMPLE_CELERY_APP`` names the Celery app (``module:attribute``, default the plain example's);
``beatleader``'s own settings come from the environment (``BEATLEADER_ZK_HOSTS``...).

uwsgi: the same with ``uwsgidecorators.postfork`` (start the beat in the decorated function), or
``lazy-apps = true`` so that the app, and the beat with it, is loaded in each worker.
"""

from __future__ import annotations

import os
from typing import Any

from celery.utils.imports import symbol_by_name

from beatleader import EmbeddedBeat

workers = 3
bind = "127.0.0.1:8000"

CELERY_APP = os.environ.get("EXAMPLE_CELERY_APP", "examples.plain.proj:app")


def post_fork(server: Any, worker: Any) -> None:
    worker.beat = EmbeddedBeat(symbol_by_name(CELERY_APP)).start()


def worker_exit(server: Any, worker: Any) -> None:
    beat = getattr(worker, "beat", None)
    if beat is not None:
        beat.stop()
