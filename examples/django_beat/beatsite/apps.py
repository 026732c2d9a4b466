"""Optionally run the beat inside the web server's processes (``EXAMPLE_EMBEDDED_BEAT=1``).

Instead of ``celery beat`` services, each process that serves requests can be a contender:
``ready()`` starts an ``EmbeddedBeat`` with the django-celery-beat scheduler. Under gunicorn
(without ``preload_app``) ``ready()`` runs in each worker after the fork, which is where a
ZooKeeper session must be made. Management commands, celery and ``runserver``'s reloader
process do not start it (see ``examples/django_app/beatapp/apps.py`` for ``runserver``).
"""

from __future__ import annotations

import os
import sys

from django.apps import AppConfig

from beatleader import EmbeddedBeat

#: Programs whose processes serve this project's requests.
SERVERS = frozenset({"gunicorn", "uwsgi", "uvicorn", "daphne", "hypercorn"})


class BeatsiteConfig(AppConfig):
    name = "beatsite"
    beat: EmbeddedBeat | None = None

    def ready(self) -> None:
        if not os.environ.get("EXAMPLE_EMBEDDED_BEAT"):
            return
        if os.path.basename(sys.argv[0]) not in SERVERS:
            return
        from beatsite.celery import app

        scheduler = "beatleader.django.DatabaseScheduler"
        self.beat = EmbeddedBeat(app, scheduler_cls=scheduler).start()
