"""WSGI entry point: ``gunicorn --chdir examples/django_app mysite.wsgi``.

``/beatleader/`` is the read-only web dashboard (``beatleader.web``, docs/web.md), in front of
Django's application (``runserver`` serves this ``application`` too: ``WSGI_APPLICATION``).
"""

import os

from django.core.wsgi import get_wsgi_application

from beatleader.web import make_dashboard, mount

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

from mysite.celery import app as celery_app

application = mount(get_wsgi_application(), "/beatleader", make_dashboard(celery_app))
