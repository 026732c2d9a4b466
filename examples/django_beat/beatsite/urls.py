"""The admin, where the periodic tasks are edited (http://127.0.0.1:8000/admin/), and ``/beat``."""

from django.contrib import admin
from django.urls import path

from beatsite.views import beat_status

urlpatterns = [path("admin/", admin.site.urls), path("beat", beat_status)]
