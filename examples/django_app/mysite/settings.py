"""Settings of the example project: only what serving ``/beat`` and the beat need.

beatleader reads ``BEATLEADER_ZK_HOSTS``, ``BEATLEADER_PATH``... from the environment itself
(``CELERY_BEATLEADER_ZK_HOSTS`` here would set it too). The broker is ``CELERY_BROKER_URL``, or a
folder for kombu's filesystem transport in ``EXAMPLE_BROKER_DIR``.
"""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["beatapp"]
WSGI_APPLICATION = "mysite.wsgi.application"  # with the dashboard at /beatleader/
ROOT_URLCONF = "mysite.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL")
_broker_dir = os.environ.get("EXAMPLE_BROKER_DIR")
if _broker_dir:
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": _broker_dir,
        "data_folder_out": _broker_dir,
    }
CELERY_BEAT_SCHEDULE = {
    "heartbeat": {
        "task": "mysite.heartbeat",
        "schedule": float(os.environ.get("EXAMPLE_INTERVAL", "10")),
    },
}
