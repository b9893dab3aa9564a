"""Configure analytics_vitally once Django's settings are loaded, failing fast on a bad one."""

from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings

import analytics_vitally as analytics


class TrackingConfig(AppConfig):
    name = "tracking"

    def ready(self) -> None:
        # Runs at start-up in every process that loads Django (runserver, manage.py commands,
        # each gunicorn/uWSGI worker, Celery): a ConfigurationError here stops it before it serves.
        analytics.configure(**getattr(settings, "VITALLY", {}))
