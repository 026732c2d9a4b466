"""Settings of the test project: django-celery-beat, the database from ``TEST_DATABASE_URL``."""

from __future__ import annotations

import os

from tests.djangoproj.dburl import database

SECRET_KEY = "beatleader-tests-only"
INSTALLED_APPS = ["django_celery_beat"]
DATABASES = {"default": database(os.environ.get("TEST_DATABASE_URL", "sqlite:///:memory:"))}
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
