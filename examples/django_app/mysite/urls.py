from beatapp.views import beat_status
from django.urls import path

urlpatterns = [path("beat", beat_status)]
