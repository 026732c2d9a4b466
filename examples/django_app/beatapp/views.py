import os

from django.apps import apps
from django.http import HttpRequest, JsonResponse


def beat_status(request: HttpRequest) -> JsonResponse:
    """This process's beat: running, leader, identity, path, zk_connected, pid."""
    beat = apps.get_app_config("beatapp").beat
    if beat is None:
        return JsonResponse({"running": False, "leader": False, "pid": os.getpid()})
    return JsonResponse(beat.status())
