"""A Django project without django-celery-beat: the scheduler must refuse it in one line."""

SECRET_KEY = "beatleader-tests-only"
INSTALLED_APPS: list[str] = []
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
