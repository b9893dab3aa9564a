"""HTTP delivery of batches: one session, retries, error mapping, isolation of bad messages.

``Transport.deliver(items)`` posts already-encoded messages as one batch and
never raises: what Vitally did not accept goes to ``on_error`` and the log, and
the returned ``Outcome`` says what happened.
"""

from __future__ import annotations

import gzip
import json
import logging
import platform
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Dict, List, Optional

import backoff
import requests

from .errors import AuthenticationError, DeliveryError
from .settings import Settings
from .version import VERSION

log = logging.getLogger("analytics_vitally")

USER_AGENT = f"analytics-vitally/{VERSION} (python {platform.python_version()})"
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
"""Answers worth trying again: Vitally or the network may get better."""
SPLIT_STATUSES = frozenset({400, 413})
"""Answers to a batch that may be caused by only some of its messages."""
MAX_WAIT = 30.0
"""No single backoff wait is longer than this (Retry-After included, within max_retry_time)."""
AUTH_PAUSE = 60.0
"""After a 401, batches fail without a request for this many seconds."""


@dataclass
class Outcome:
    """What became of one batch handed to ``Transport.deliver``."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    batches: int = 0
    """Requests Vitally accepted."""


def retry_after_seconds(value: Optional[str], now: Optional[datetime] = None) -> Optional[float]:
    """A ``Retry-After`` header (seconds or an HTTP date) as seconds from now."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def _environment_settings(url: str, proxies: Optional[Dict[str, str]]) -> Dict[str, Any]:
    """Proxies and certificate settings for ``url`` from the environment, as requests would find them."""
    with requests.Session() as probe:
        found = probe.merge_environment_settings(url, dict(proxies or {}), None, None, None)
    return {"proxies": found["proxies"], "verify": found["verify"]}


class Transport:
    """Posts batches to Vitally for one client."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._url = settings.url
        self._on_error = settings.on_error
        self._headers = {
            "Authorization": f"Basic {settings.write_key}",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        if settings.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._environment = _environment_settings(self._url, settings.proxies)
        # Every batch is the same POST but for its body: prepared once, copied per request.
        self._template = requests.Request("POST", self._url, headers=self._headers).prepare()
        self._local = threading.local()
        self._aborted = threading.Event()
        self._auth_paused_until = 0.0
        self._clock: Callable[[], float] = time.monotonic

    def __repr__(self) -> str:
        return f"<Transport {self._url}>"

    def _session(self) -> requests.Session:
        # One keep-alive session per worker thread: requests.Session is not thread-safe.
        session: Optional[requests.Session] = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
        return session

    def reset_after_fork(self) -> None:
        """Forget connections and pauses inherited from the parent process."""
        self._local = threading.local()
        self._aborted = threading.Event()
        self._auth_paused_until = 0.0

    def abort(self) -> None:
        """Stop waiting between retries; what is still undelivered fails at once."""
        self._aborted.set()

    def deliver(self, items: List[str]) -> Outcome:
        """Post encoded messages as one batch (splitting it if Vitally rejects some)."""
        outcome = Outcome()
        self._deliver(items, outcome)
        return outcome

    def _deliver(self, items: List[str], outcome: Outcome) -> None:
        try:
            self._post_with_retries(items, outcome)
        except DeliveryError as error:
            if error.status in SPLIT_STATUSES and len(items) > 1:
                middle = len(items) // 2
                log.debug("batch of %d rejected (%s); retrying its halves", len(items), error.status)
                self._deliver(items[:middle], outcome)
                self._deliver(items[middle:], outcome)
                return
            outcome.failed += len(items)
            self._report(error, items)
        else:
            outcome.sent += len(items)
            outcome.batches += 1

    def _post_with_retries(self, items: List[str], outcome: Outcome) -> None:
        body = ("[" + ",".join(items) + "]").encode()
        if self._settings.gzip:
            body = gzip.compress(body, compresslevel=6)
        waits = backoff.expo(factor=self._settings.retry_wait, max_value=MAX_WAIT)
        next(waits)
        deadline = self._clock() + self._settings.max_retry_time
        tries = 0
        while True:
            error, retry_after = self._post(body, len(items))
            if error is None:
                return
            tries += 1
            if error.status is not None and error.status not in RETRY_STATUSES:
                raise error
            if tries > self._settings.max_retries:
                raise DeliveryError(f"{error} (gave up after {tries} tries)", error.status, error.body)
            wait = retry_after if retry_after is not None else backoff.full_jitter(next(waits))
            if self._clock() + wait > deadline:
                raise DeliveryError(
                    f"{error} (gave up: waiting {wait:.1f}s more would pass max_retry_time="
                    f"{self._settings.max_retry_time}s)",
                    error.status,
                    error.body,
                )
            outcome.retried += 1
            log.debug("retrying a batch of %d in %.2fs after: %s", len(items), wait, error)
            if self._aborted.wait(wait):
                raise DeliveryError(f"{error} (not retried: the client is shutting down)", error.status, error.body)

    def _post(self, body: bytes, count: int) -> tuple[Optional[DeliveryError], Optional[float]]:
        """One request: (None, None) if accepted, else (the error, Retry-After seconds)."""
        if self._aborted.is_set():
            raise DeliveryError("not sent: the client shut down before these messages could be delivered")
        paused = self._auth_paused_until - self._clock()
        if paused > 0:
            raise AuthenticationError(
                f"not sent: Vitally refused the write_key (401) recently; sending is paused for {paused:.0f}s more",
                401,
            )
        request = self._template.copy()
        request.prepare_body(body, None)
        session = self._session()
        started = self._clock()
        try:
            # Straight to the session's adapter (its keep-alive pool): a batch needs no cookies, hooks or
            # redirects (a redirected POST must not be followed as a GET), and skipping them saves CPU.
            # The environment (proxies, CA bundle) was read once; requests would read it per request,
            # and could let a ~/.netrc entry replace the Authorization header.
            response = session.get_adapter(self._url).send(
                request, timeout=self._settings.timeout, **self._environment
            )
        except requests.RequestException as exception:
            log.debug("batch of %d: no response (%s)", count, type(exception).__name__)
            return DeliveryError(f"no response from Vitally: {type(exception).__name__}: {exception}"), None
        status = response.status_code
        log.debug("batch of %d: %d in %.0f ms", count, status, (self._clock() - started) * 1000)
        if 200 <= status < 300:
            return None, None
        text = response.text[:2000]
        if status == 401:
            self._auth_paused_until = self._clock() + AUTH_PAUSE
            raise AuthenticationError(
                f"Vitally refused the write_key (401): check the Analytics API token; "
                f"sending is paused for {AUTH_PAUSE:.0f}s",
                status,
                text,
            )
        retry_after = retry_after_seconds(response.headers.get("Retry-After")) if status in (429, 503) else None
        return DeliveryError(f"Vitally answered {status}: {text}", status, text), retry_after

    def _report(self, error: DeliveryError, items: List[str]) -> None:
        if self._on_error is None:
            log.error("%d message(s) not delivered: %s", len(items), error)
            return
        log.info("%d message(s) not delivered (passed to on_error): %s", len(items), error)
        try:
            self._on_error(error, [json.loads(item) for item in items])
        except Exception:
            log.exception("on_error raised")


__all__ = ["Outcome", "Transport", "retry_after_seconds"]
