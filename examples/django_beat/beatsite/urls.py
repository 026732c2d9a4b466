"""The admin, where the periodic tasks are edited: http://127.0.0.1:8000/admin/."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
