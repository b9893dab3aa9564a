"""Settings of the example project; VITALLY holds analytics_vitally's settings."""

from __future__ import annotations

import os

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = ["tracking.apps.TrackingConfig"]
MIDDLEWARE: list = []
ROOT_URLCONF = "site_project.urls"
DATABASES: dict = {}
USE_TZ = True

# Any setting of analytics_vitally.configure(); None falls back to VITALLY_WRITE_KEY,
# VITALLY_SUBDOMAIN and VITALLY_HOST.
VITALLY = {
    "write_key": os.environ.get("VITALLY_WRITE_KEY"),
    "subdomain": os.environ.get("VITALLY_SUBDOMAIN"),
    "exit_timeout": 5.0,
}
