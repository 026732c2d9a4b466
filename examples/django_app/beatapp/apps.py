"""Starts beatleader's beat when Django is ready, in the processes that serve requests only.

Django may call ``ready()`` twice, and its ``runserver`` autoreloader runs the project in two
processes: a watcher, and the child that serves (the one with ``RUN_MAIN=true`` in its
environment), which it restarts on every code change. So:

* ``EmbeddedBeat.start()`` is a no-op returning the running beat when one already runs for this
  Celery app in this process: a second ``ready()`` cannot make a second contender.
* Under ``runserver`` the beat starts only where ``RUN_MAIN == "true"`` (or with ``--noreload``):
  the watcher never contends. Stop runserver with SIGTERM to that child (or Ctrl-C): it exits
  through ``atexit``, which hands leadership over at once.
* Other management commands (``migrate``, ``shell``...) and a Celery worker (whose pool processes
  are forks: a beat started before them would make each one a contender) do not start it: only
  the servers named in ``SERVERS`` do; add yours.
* Under gunicorn or uwsgi, ``ready()`` runs in each worker, after the fork, unless the app is
  preloaded in the master (gunicorn ``preload_app``, uwsgi without ``lazy-apps``): then start the
  beat from the server's post-fork hook instead (see ``examples/gunicorn.conf.py``).
"""

from __future__ import annotations

import os
import sys

from django.apps import AppConfig

from beatleader import EmbeddedBeat

#: Programs whose processes serve this project's requests.
SERVERS = frozenset({"gunicorn", "uwsgi", "uvicorn", "daphne", "hypercorn"})


def is_serving_process(argv: list[str]) -> bool:
    """True where requests are served: a server's worker, or the child of ``runserver``."""
    if argv[1:2] == ["runserver"]:
        return os.environ.get("RUN_MAIN") == "true" or "--noreload" in argv
    return os.path.basename(argv[0]) in SERVERS


class BeatConfig(AppConfig):
    name = "beatapp"
    beat: EmbeddedBeat | None = None

    def ready(self) -> None:
        if not is_serving_process(sys.argv):
            return
        from mysite.celery import app as celery_app

        self.beat = EmbeddedBeat(celery_app).start()
