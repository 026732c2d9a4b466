"""A tiny Django project whose periodic tasks live in django-celery-beat's tables (see README)."""

from beatsite.celery import app as celery_app

__all__ = ["celery_app"]
