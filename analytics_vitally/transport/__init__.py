"""HTTP delivery of batches: retries, error mapping, isolation of bad messages, bounded requests.

``Transport.deliver(items)`` posts already-encoded messages as one batch and
never raises: the returned ``Outcome`` says what was delivered, and which messages
were not and why (``failures``); it reports nothing itself.

Whatever the server does, one request ends within ``timeout`` seconds (a watchdog
thread shuts down the socket of a request past its deadline), at most
``ANSWER_LIMIT`` bytes of an answer are read, and nothing the server sends back
is passed on or logged with the write key in it.

Retries follow one schedule per batch: steps of ``retry_wait`` doubling, each at most ``MAX_WAIT``;
at most ``max_retries`` steps and ``max_retry_time`` seconds. An answer asking for a retry (5xx, 408,
429) waits out a step, full-jittered, or its ``Retry-After``: a step per try. A failure with no answer
(connection refused or reset, a timeout) says nothing of Vitally's load, only that it is not back
yet: its step lasts half to all of its length (jittered), the batch is tried again every 0.5 to 1 s
(``NO_ANSWER_WAIT``) within it, and only a new step counts against ``max_retries``. So delivery
resumes within about a second of Vitally's return, a refused connection does not use up
``max_retries`` in seconds (with the defaults, ``max_retry_time`` ends the batch first: ten steps
last 75 s at least), and a refusal that comes at once (loopback) does not spin: within a step each
wait is half a second at least, or the rest of the step.

This module decides (retries, pauses, splitting, errors) and picks each thread's lane; the rest
of the package, each module importing only those listed after it:

- ``direct``: the lane that speaks HTTP over one kept-alive socket per thread;
- ``proxied``: the lane through a proxy (requests' adapter, with urllib3 connections that obey deadlines);
- ``lane``: what a lane is (``Lane``), and ``ANSWER_LIMIT``;
- ``deadline``: request deadlines and the watchdog thread that enforces them; ``_post`` arms one
  per request and passes it to ``Lane.post``;
- ``redact``: the write key taken out of what a server sent back.
"""

from __future__ import annotations

import gzip
import logging
import math
import platform
import random
import socket
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from http.client import HTTPException
from typing import Any, Dict, List, Optional

import backoff
import requests
import urllib3
from requests.utils import select_proxy

from .. import lifecycle
from ..delivery import Failure, Outcome, request_observers
from ..errors import AuthenticationError, DeliveryError
from ..settings import Settings
from ..version import VERSION
from .deadline import Deadline, watchdog
from .direct import Address, DirectLane
from .lane import ANSWER_LIMIT, Lane
from .proxied import ProxiedLane
from .redact import Redactor

log = logging.getLogger("analytics_vitally")

USER_AGENT = f"analytics-vitally/{VERSION} (python {platform.python_version()})"
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
"""Answers worth trying again: Vitally or the network may get better."""
SPLIT_STATUSES = frozenset({400, 413})
"""Answers to a batch that may be caused by only some of its messages."""
MAX_WAIT = 30.0
"""No single wait between tries is longer than this: a longer Retry-After is capped to it."""
NO_ANSWER_WAIT = 1.0
"""After a failure with no answer (refused, reset, timed out), the next try comes within this many
seconds (jittered over its second half): how long the client may stay idle once Vitally is back."""
AUTH_PAUSE = 60.0
"""After a 401, batches fail without a request for this many seconds."""

_BROKEN = (requests.RequestException, urllib3.exceptions.HTTPError, HTTPException, OSError)
"""What a request or the reading of its answer raises when the connection or the server failed."""


def retry_after_seconds(value: Optional[str], now: Optional[datetime] = None) -> Optional[float]:
    """A ``Retry-After`` header (seconds or an HTTP date) as seconds from now (not capped)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return None if math.isnan(seconds) else max(0.0, seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def _environment_settings(url: str, proxies: Optional[Dict[str, str]]) -> Dict[str, Any]:
    """Proxies and certificate settings for ``url`` from the environment, as requests would find them."""
    with requests.Session() as probe:
        found = probe.merge_environment_settings(url, dict(proxies or {}), None, None, None)
    return {"proxies": found["proxies"], "verify": found["verify"]}


def _given_up(error: DeliveryError, why: str) -> DeliveryError:
    """``error`` as the final word on a batch, saying why it is not tried again."""
    return DeliveryError(f"{error} ({why})", error.status, error.body, error.retry_after)


class Transport:
    """Posts batches to Vitally for one client.

    ``retries`` counts the retries decided so far, each as soon as it is decided (before its wait).
    """

    retries: int

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._url = settings.url
        self._headers = {
            "Authorization": f"Basic {settings.write_key}",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        if settings.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._environment = _environment_settings(self._url, settings.proxies)
        self._proxied = select_proxy(self._url, self._environment["proxies"]) is not None
        self._redact = Redactor(settings.write_key or "")
        self._addresses: List[Address] = []
        """Vitally's addresses as looked up while the program ran (under gevent or eventlet only)."""
        self.reset_after_fork()
        lifecycle.track_transport(self)

    def __repr__(self) -> str:
        return f"<Transport {self._url}>"

    @property
    def environment(self) -> Dict[str, Any]:
        """The proxies and certificate checking found for Vitally's URL, as requests finds them (the
        settings' ``proxies`` win over the environment's): ``{"proxies": {...}, "verify": True or a
        CA bundle path}``. A copy: changing it changes nothing."""
        return {"proxies": dict(self._environment["proxies"]), "verify": self._environment["verify"]}

    def _lane(self) -> Lane:
        """This thread's way to Vitally: its own kept-alive connection (or, via a proxy, requests' adapter)."""
        lane: Optional[Lane] = getattr(self._local, "lane", None)
        if lane is None:
            if self._proxied:
                lane = ProxiedLane(self._url, self._headers, self._environment)
            else:
                lane = DirectLane(self._url, self._headers, self._environment["verify"], self._addresses)
            self._local.lane = lane
        return lane

    def reset_after_fork(self) -> None:
        """Forget connections, pauses and counts inherited from the parent process."""
        self._made_with = lifecycle.threading_kind()
        self._local = threading.local()
        self._aborted = threading.Event()
        self._why_one_try = ""  # stop_retrying() ran: why
        self._wake = threading.Event()  # set by abort() and stop_retrying(): a wait between tries ends
        self._lock = threading.Lock()  # guards retries and _paused_until
        self._auth_paused_until = 0.0
        self._paused_until = 0.0  # no request before this (a 429 or a Retry-After), for every thread
        self._pause_status: Optional[int] = None
        self.retries = 0

    def _refresh_locks(self) -> None:
        """Make the lock, the flags and the per-thread connections again with patched ``threading``."""
        self._made_with = lifecycle.threading_kind()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._aborted, self._wake = _remade(self._aborted), _remade(self._wake)

    def get_ready(self) -> None:
        """On a worker thread as it starts: under gevent or eventlet, look up Vitally's addresses now.

        Their resolvers run each look-up on an OS thread, which Python refuses to start once the
        interpreter is exiting (3.12 on), or first register an atexit hook, refused then too
        (3.9): a connection made by the exit drain would fail. The exit drain connects to the
        addresses found here instead. Elsewhere it does nothing.
        """
        if self._proxied or not lifecycle.green():
            return
        parsed = urllib3.util.parse_url(self._url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            found = socket.getaddrinfo((parsed.host or "").strip("[]"), port, 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError, RuntimeError) as error:  # the request will look again
            log.debug("looking up %s at a worker thread's start failed: %s", parsed.host, error)
            return
        self._addresses[:] = found

    def release(self) -> None:
        """Close the calling thread's connection (a worker thread calls this as it ends)."""
        lane: Optional[Lane] = getattr(self._local, "lane", None)
        if lane is not None:
            self._local.lane = None
            lane.close()

    def abort(self) -> None:
        """Stop waiting between retries and end requests in flight; what is undelivered fails at once."""
        self._aborted.set()
        self._wake.set()
        watchdog.get().fire_all(self)

    def stop_retrying(self, why: str) -> None:
        """From now on a batch gets one try: a failed one is not tried again (``why`` says why in its
        error), and a wait for another try ends now. Requests in flight go on."""
        self._why_one_try = why
        self._wake.set()

    def deliver(self, items: List[str]) -> Outcome:
        """Post encoded messages as one batch (splitting it if Vitally rejects some); never raises.

        What was not delivered is in the outcome's ``failures``, by position in ``items``: the
        transport reports nothing; its caller decides what a failure means (``delivery.Reporting``,
        ``durable.Durable``)."""
        if lifecycle.patched_since(self._made_with):  # gevent or eventlet patched threading since
            self._refresh_locks()
        outcome = Outcome()
        self._deliver(items, 0, outcome)
        return outcome

    def _deliver(self, items: List[str], start: int, outcome: Outcome) -> None:
        try:
            self._post_with_retries(items, outcome)
        except DeliveryError as error:
            if error.status in SPLIT_STATUSES and len(items) > 1:
                middle = len(items) // 2
                log.debug("batch of %d rejected (%s); retrying its halves", len(items), error.status)
                self._deliver(items[:middle], start, outcome)
                self._deliver(items[middle:], start + middle, outcome)
                return
            outcome.failures.append(Failure(error, start, start + len(items)))
        except Exception as exception:  # a bug must not lose messages silently, nor kill the worker
            log.debug("unexpected error delivering a batch of %d", len(items), exc_info=True)
            why = f"not delivered: unexpected {type(exception).__name__}: {self._redact.text(exception)}"
            outcome.failures.append(Failure(DeliveryError(why), start, start + len(items)))
        else:
            outcome.sent += len(items)
            outcome.batches += 1

    def _post_with_retries(self, items: List[str], outcome: Outcome) -> None:
        settings = self._settings
        body = ("[" + ",".join(items) + "]").encode()
        if settings.gzip:
            body = gzip.compress(body, compresslevel=6)
        steps = backoff.expo(factor=settings.retry_wait, max_value=MAX_WAIT)
        next(steps)
        started = time.monotonic()
        deadline = started + settings.max_retry_time
        taken = 0  # steps of the schedule begun: what max_retries bounds
        step_end = 0.0  # a failure with no answer before this is retried within the current step
        tries = 0
        while True:
            if self._paused_until:
                self._wait_out_pause(deadline)
            try:
                self._post(body, len(items))
                return
            except DeliveryError as failure:
                error = failure
            if error.status is not None and error.status not in RETRY_STATUSES:
                raise error
            tries += 1
            if self._wake.is_set():
                raise _given_up(error, self._why_not_retried())
            now = time.monotonic()
            retry_after = error.retry_after
            client_wide = False
            if error.status is None:  # no answer, so nobody asked to slow down: look again soon
                if now >= deadline:
                    why = f"gave up after {tries} tries in {now - started:.1f}s"
                    raise _given_up(error, f"{why}: max_retry_time={settings.max_retry_time}s")
                if now >= step_end:  # the schedule's step is over: the next one begins, and counts
                    taken += 1
                    step_end = now + random.uniform(0.5, 1.0) * next(steps)
                wait = min(random.uniform(NO_ANSWER_WAIT / 2, NO_ANSWER_WAIT), step_end - now, deadline - now)
            else:
                taken += 1
                step_end = 0.0
                wait = min(retry_after, MAX_WAIT) if retry_after is not None else backoff.full_jitter(next(steps))
                client_wide = error.status == 429 or retry_after is not None
            if client_wide:  # Vitally asked the whole client to slow down: no thread sends before it passes
                with self._lock:
                    self._paused_until = max(self._paused_until, now + wait)
                    self._pause_status = error.status
            if taken > settings.max_retries:
                raise _given_up(error, f"gave up after {tries} tries")
            if now + wait > deadline:
                raise _given_up(
                    error, f"gave up: waiting {wait:.1f}s more would pass max_retry_time={settings.max_retry_time}s"
                )
            with self._lock:
                self.retries += 1
            outcome.retried += 1
            log.debug("retrying a batch of %d in %.2fs after: %s", len(items), wait, error)
            if client_wide:
                continue  # the pause is waited out before the next request
            if self._wake.wait(wait):
                raise _given_up(error, self._why_not_retried())

    def _why_not_retried(self) -> str:
        if self._aborted.is_set():
            return "not retried: the client is shutting down"
        return f"not retried: {self._why_one_try}"

    def _wait_out_pause(self, deadline: float) -> None:
        """Wait until the client-wide pause (a 429 or a Retry-After) is over, unless aborted or retries stopped."""
        while not self._wake.is_set():
            left = self._paused_until - time.monotonic()
            if left <= 0:
                return
            if time.monotonic() + left > deadline:
                raise DeliveryError(
                    f"not sent: the client is paused {left:.1f}s more (Vitally answered {self._pause_status}), "
                    f"which would pass max_retry_time={self._settings.max_retry_time}s",
                    self._pause_status,
                )
            self._wake.wait(left)

    def _post(self, body: bytes, count: int) -> None:
        """One request: returns if Vitally accepted it, else raises ``DeliveryError``.

        The error's ``status`` is None when no (complete) answer came back; with ``RETRY_STATUSES``
        it says whether another try is worth it, and ``retry_after`` is Vitally's Retry-After.
        """
        if self._aborted.is_set():
            raise DeliveryError("not sent: the client shut down before these messages could be delivered")
        paused = self._auth_paused_until - time.monotonic()
        if paused > 0:
            raise AuthenticationError(
                f"not sent: Vitally refused the write_key (401) recently; sending is paused for {paused:.0f}s more",
                401,
            )
        if not request_observers:
            self._exchange(body, count)
            return
        started = time.monotonic()
        try:
            status = self._exchange(body, count)
        except DeliveryError as error:
            failure = str(error.status) if error.status is not None else "no_response"
            for observe in request_observers:
                observe(self._url, time.monotonic() - started, error.status, failure)
            raise
        for observe in request_observers:
            observe(self._url, time.monotonic() - started, status, None)

    def _exchange(self, body: bytes, count: int) -> int:
        """The request itself, within its deadline: Vitally's status if it accepted the batch."""
        started = time.monotonic()
        deadline = watchdog.get().arm(self._settings.timeout, self)
        lane = self._lane()
        try:
            if self._aborted.is_set():  # abort() ran after the check above: it did not see this deadline
                raise DeliveryError("not sent: the client shut down before these messages could be delivered")
            try:
                response = lane.post(body, deadline)
            except _BROKEN as exception:
                log.debug("batch of %d: no response (%s)", count, type(exception).__name__)
                raise DeliveryError(f"no response from Vitally: {self._why(exception, deadline)}") from None
            if deadline.fired:  # the headers "ended" because the deadline shut the socket: no whole answer
                response.close()
                why = self._why(TimeoutError("the answer's headers did not arrive whole"), deadline)
                raise DeliveryError(f"no complete response from Vitally: {why}")
            status = response.status
            try:
                answer, longer = lane.read_answer(response)
            except _BROKEN as exception:
                if 200 <= status < 300:  # accepted; only the rest of the answer got lost
                    log.debug("batch of %d: %d, then the answer broke off", count, status)
                    return status
                why = self._why(exception, deadline)
                raise DeliveryError(f"Vitally answered {status}, then the answer broke off: {why}") from None
        finally:
            deadline.disarm()
            if deadline.fired:  # its socket was shut down: never reused
                lane.close()
        log.debug("batch of %d: %d in %.0f ms", count, status, (time.monotonic() - started) * 1000)
        if 200 <= status < 300:
            return status
        text = self._redact.answer(answer, longer)
        shown = f"{text} [cut at {ANSWER_LIMIT} bytes]" if longer else text
        if status == 401:
            self._auth_paused_until = time.monotonic() + AUTH_PAUSE
            raise AuthenticationError(
                f"Vitally refused the write_key (401): check the Analytics API token; "
                f"sending is paused for {AUTH_PAUSE:.0f}s",
                status,
                text,
            )
        retry_after = retry_after_seconds(response.headers.get("Retry-After")) if status in (429, 503) else None
        raise DeliveryError(f"Vitally answered {status}: {shown}", status, text, retry_after)

    def _why(self, exception: BaseException, deadline: Deadline) -> str:
        """Why a request got no (complete) answer, without the write key a server may have echoed."""
        if deadline.fired:
            if self._aborted.is_set():
                return "the client shut down during the request"
            return f"timed out after {self._settings.timeout}s"
        return f"{type(exception).__name__}: {self._redact.text(exception)}"


def _remade(flag: threading.Event) -> threading.Event:
    """A new ``threading.Event`` (made with patched ``threading``), set if ``flag`` is."""
    made = threading.Event()
    if flag.is_set():
        made.set()
    return made


__all__ = ["ANSWER_LIMIT", "MAX_WAIT", "NO_ANSWER_WAIT", "Transport", "retry_after_seconds"]
