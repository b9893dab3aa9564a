"""For gunicorn or uWSGI: ``gunicorn site_project.wsgi`` (see examples/wsgi_app.py for their recipes)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_project.settings")
application = get_wsgi_application()
