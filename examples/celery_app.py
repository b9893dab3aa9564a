"""Celery with the prefork pool: deliver in each pool process before it exits.

    VITALLY_WRITE_KEY=... VITALLY_SUBDOMAIN=acme celery -A celery_app worker --pool=prefork

- ``configure()`` at import runs in the main worker process, before the pool forks:
  a bad setting stops the worker at start-up, and each pool process gets a fresh queue,
  lock and thread through the library's fork hook (nothing to do in
  ``worker_process_init``).
- Pool processes (billiard) leave through ``os._exit``: no ``atexit``, so the library's
  exit drain does not run there. At a warm shutdown (SIGTERM), on ``--max-tasks-per-child``
  and ``--max-memory-per-child`` recycling, each pool process fires
  ``worker_process_shutdown`` just before it exits: shut the client down there, or the
  messages its last tasks queued are lost.
- The broker comes from the module named by ``CELERY_CONFIG_MODULE`` (the tests use
  kombu's filesystem transport, which needs no server).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown

import analytics_vitally as analytics

app = Celery("celery_app")
app.config_from_envvar("CELERY_CONFIG_MODULE", silent=True)

analytics.configure()  # VITALLY_WRITE_KEY, and VITALLY_SUBDOMAIN or VITALLY_HOST, from the environment


@worker_process_shutdown.connect
def deliver_before_exit(**_: Any) -> None:
    analytics.shutdown(timeout=5.0)  # keep it well below the time your supervisor waits before SIGKILL


@app.task
def record_signup(user_id: str, account_id: str) -> str:
    _, message = analytics.track(user_id, "signed-up", account_id=account_id)
    return str(message["messageId"])  # the tests compare it with what arrived
