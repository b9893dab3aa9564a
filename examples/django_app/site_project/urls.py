from __future__ import annotations

from django.urls import path
from tracking.views import signup

urlpatterns = [path("signup/<str:user_id>/", signup)]
