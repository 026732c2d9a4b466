"""beatleader for django-celery-beat: ``celery -A proj beat -S beatleader.django.DatabaseScheduler``

See :mod:`beatleader.django.scheduler` and ``docs/django.md``. Importing this package does not
import Django; the scheduler sets Django up when it starts (as celery's Django fixup would).
"""

from beatleader.django.scheduler import DatabaseScheduler

__all__ = ["DatabaseScheduler"]
