"""WSGI entry point: ``gunicorn --chdir examples/django_beat beatsite.wsgi``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "beatsite.settings")

application = get_wsgi_application()
