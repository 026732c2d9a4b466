"""A minimal Django project for the django-celery-beat tests (``tests/test_django_beat.py``).

Beat processes run ``celery -A tests.app beat -S beatleader.django.DatabaseScheduler`` with
``DJANGO_SETTINGS_MODULE=tests.djangoproj.settings`` and ``TEST_DATABASE_URL`` naming the
database (``postgresql://user@host:port/name`` or ``sqlite:////absolute/path``).
"""
