"""WSGI entry point: ``gunicorn --chdir examples/django_beat beatsite.wsgi``.

``/beatleader/`` is the read-only web dashboard (``beatleader.web``, docs/web.md), in front of
Django's application: the leader, the contenders and every entry, the database's rows among them.
"""

import os

from django.core.wsgi import get_wsgi_application

from beatleader.web import make_dashboard, mount

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "beatsite.settings")

from beatsite.celery import app as celery_app

application = mount(get_wsgi_application(), "/beatleader", make_dashboard(celery_app))
