"""``GET /beat``: this process's ``EmbeddedBeat.status()`` (when it runs one)."""

from __future__ import annotations

import os

from django.apps import apps
from django.http import HttpRequest, JsonResponse


def beat_status(request: HttpRequest) -> JsonResponse:
    beat = apps.get_app_config("beatsite").beat
    if beat is None:
        return JsonResponse({"running": False, "leader": False, "pid": os.getpid()})
    return JsonResponse(beat.status())
