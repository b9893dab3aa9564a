"""A WSGI app that tracks one event per request, for gunicorn and uWSGI.

    VITALLY_WRITE_KEY=... VITALLY_SUBDOMAIN=acme gunicorn -w 4 wsgi_app:application
    VITALLY_WRITE_KEY=... VITALLY_SUBDOMAIN=acme gunicorn -w 4 --preload wsgi_app:application
    VITALLY_WRITE_KEY=... VITALLY_SUBDOMAIN=acme uwsgi --http :8000 --master --processes 4 \
        --enable-threads --lazy-apps --wsgi-file wsgi_app.py

gunicorn needs nothing special, with or without ``--preload``:

- ``configure()`` at import makes the default client and checks the settings, so a
  bad one stops gunicorn at start-up. Without ``--preload`` each worker imports this
  module and makes its own client; with ``--preload`` the master does, and each forked
  worker gets a fresh queue, lock, HTTP session and thread (the library's fork hook).
- gunicorn stops its workers on SIGTERM by letting them exit normally, which runs the
  exit drain: what is queued is delivered within ``exit_timeout`` (5 s; keep it below
  gunicorn's ``--graceful-timeout``, 30 s).

uWSGI needs two options:

- ``enable-threads``: before uWSGI 2.0.27 Python threads are off by default, and the
  library's worker thread could only send while a request is being served (the library
  logs a warning when it finds itself in that case).
- ``lazy-apps`` (or ``py-call-osafterfork``): otherwise uWSGI loads the app in the
  master and forks the workers without Python's fork handling, so the workers repeat
  the same message IDs (Vitally keeps only one of each) and can hang if the master
  sent a message before forking.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Dict, Iterable, List, Tuple

import analytics_vitally as analytics

analytics.configure()  # VITALLY_WRITE_KEY, and VITALLY_SUBDOMAIN or VITALLY_HOST, from the environment

StartResponse = Callable[[str, List[Tuple[str, str]]], object]


def application(environ: Dict[str, object], start_response: StartResponse) -> Iterable[bytes]:
    user_id = str(environ.get("PATH_INFO", "")).strip("/") or "anonymous"
    queued, message = analytics.track(user_id, "page-viewed", {"worker": os.getpid()}, account_id="acct-1")
    body = json.dumps({"queued": queued, "messageId": message["messageId"], "worker": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
