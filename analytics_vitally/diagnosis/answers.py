"""Is the write key accepted? One empty batch, sent the client's own way (its ``Transport``: lane, proxy,
TLS, headers, gzip, timeout), one try. It creates no data in Vitally.

Vitally documents 200, 400, 401 and 429 for the batch endpoint, not what it makes of an empty batch,
nor whether it checks the key before the body. So when the key's answer is 200 or 400, the same
empty batch goes again with a made-up key (``CONTROL_KEY``): only if that one gets 401 does the
first answer say the key was accepted. What each answer means, as reported:

- 2xx: accepted (the made-up key got 401: the endpoint does judge keys). The key works.
- 400: the key passed and the empty body was refused as invalid, as expected (the made-up key got
  401, so the key is checked before the body). The key works.
- 2xx or 400 while the made-up key gets the same: the endpoint does not judge keys on an empty
  batch; the key is not confirmed (``--send-test`` confirms it).
- 401: the key is refused.
- 403: not an answer Vitally documents: a proxy, firewall or gateway in between refused the request,
  or the account may not use the Analytics API.
- 404, 405: the host does not serve Vitally's batch API (a wrong host setting).
- 3xx: a redirect, which the client does not follow: the host setting is not the final URL.
- 408, 429: too many requests (or too slow): the key was not judged; messages wait and are retried.
- 5xx: Vitally (or a proxy) failed: the key was not judged; messages are retried.
- no answer: see the network findings (refused, timed out, TLS).

``send_test`` sends one real, clearly named track event (``TEST_EVENT``) with a sync-mode client.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, List, Optional, Tuple

from ..client import Client
from ..errors import AnalyticsError, DeliveryError
from ..settings import Settings
from ..transport import Transport
from ..version import VERSION
from .report import OK, PROBLEM, Findings

TOPIC = "write key"
CONTROL_KEY = "analytics-vitally-doctor-made-up-key"
"""Sent with a second empty batch to see whether the endpoint judges keys at all."""
TEST_EVENT = "analytics-vitally doctor test"
"""The event ``--send-test`` sends."""
TEST_USER = "analytics-vitally-doctor"
"""The userId of the test event unless another is given."""


def check_write_key(settings: Settings, transport: Transport, found: Findings) -> bool:
    """Post an empty batch once with ``transport`` (made from ``settings`` with ``max_retries=0``);
    True if the answer shows the key is accepted."""
    error = _empty_batch(transport)
    if error is None or error.status == 400:
        return _judged(settings, error, found)
    if error.status is None:
        found.add(TOPIC, PROBLEM, f"not judged: the empty batch got no answer: {error}", "see the findings above")
    else:
        found.add(TOPIC, PROBLEM, *_refusal(error.status, error, settings))
    return False


def _empty_batch(transport: Transport) -> Optional[DeliveryError]:
    """Post ``[]`` once: None if it was accepted (2xx), else why not (``status`` None: no answer)."""
    outcome = transport.deliver([])
    transport.release()
    return outcome.failures[0].error if outcome.failures else None


def _judged(settings: Settings, error: Optional[DeliveryError], found: Findings) -> bool:
    """The key got 2xx or 400: accepted only if a made-up key gets 401 from the same endpoint."""
    control = _empty_batch(Transport(replace(settings, write_key=CONTROL_KEY)))
    control_status = 200 if control is None else control.status
    answered = "was accepted (2xx)" if error is None else f"got 400 (the empty body refused as invalid: {_body(error)})"
    if control_status == 401:
        found.add(
            TOPIC,
            OK,
            f"accepted: an empty batch with it {answered}, while one with a made-up key got 401; no data was "
            "created in Vitally",
        )
        return True
    control_answer = "no answer" if control_status is None else str(control_status)
    found.add(
        TOPIC,
        PROBLEM,
        f"not confirmed: an empty batch with it {answered}, but one with a made-up key got {control_answer} "
        "too, so this endpoint does not judge keys on an empty batch",
        "run again with --send-test (doctor(send_test=True)) to send one real test event",
    )
    return False


def _refusal(status: int, error: DeliveryError, settings: Settings) -> Tuple[str, str]:
    """What an answer other than 2xx and 400 to the empty batch means, and what to do."""
    said = f"the endpoint answered {status} to an empty batch"
    if status == 401:
        if settings.host:
            check = "that host is the endpoint of the account the token is from"
        else:
            check = "that subdomain is the account's (the part before .vitally.io in the address you log in at)"
        return (
            f"refused: {said} (401 Unauthorized: the write key is not valid there)",
            "copy the token again from Vitally (Settings, Integrations, Vitally Analytics API, HTTPS API tab) "
            f"into write_key or VITALLY_WRITE_KEY, exactly as shown (not base64-encoded, no 'Basic '); check {check}",
        )
    if status == 403:
        return (
            f"forbidden: {said} (403, which Vitally does not document: {_body(error)})",
            "403 usually comes from something in between (a proxy, firewall or gateway that filters the "
            "request) or from an account that may not use the Analytics API: check the proxy or firewall "
            "rules for the endpoint, then ask Vitally's support with this report",
        )
    if status in (404, 405):
        return (
            f"{said}: {status} (no batch API at this address: {_body(error)})",
            "check the host setting: leave it unset (and set subdomain) for Vitally, or give the base URL "
            "only, such as https://acme.api.vitally.io",
        )
    if 300 <= status < 400:
        return (
            f"{said}: a redirect ({status}), which the client does not follow",
            "set host to the address it redirects to, or leave host unset and set subdomain",
        )
    if status in (408, 429):
        wait = f" (Retry-After: {error.retry_after:.0f}s)" if error.retry_after is not None else ""
        return (
            f"not judged: {said} ({status}: too many requests{wait}); messages wait and are retried",
            "run doctor again in a minute; if 429 lasts, fewer requests (a larger upload_size) or fewer "
            "processes sending at once help",
        )
    if status >= 500:
        return (
            f"not judged: {said} ({status}: a server error in Vitally or a proxy: {_body(error)})",
            "messages are retried within max_retry_time; run doctor again later, and if it lasts, check "
            "Vitally's status page or the proxy",
        )
    return (f"{said} ({status}: {_body(error)})", "ask Vitally's support with this report")


def _body(error: DeliveryError) -> str:
    text = (error.body or "").strip()
    return (text[:200] + "...") if len(text) > 200 else (text or "no body")


def send_test(settings: Settings, user_id: str, found: Findings) -> bool:
    """Send one test event, in sync mode, one try; True if Vitally accepted it."""
    failures: List[Tuple[Exception, Any]] = []
    client = Client(
        **{
            **{name: getattr(settings, name) for name in ("write_key", "subdomain", "host", "timeout", "gzip")},
            "proxies": settings.proxies,
            "sync_mode": True,
            "spool": "",
            "max_retries": 0,
            "drain_on_sigterm": False,
            "on_error": lambda error, messages: failures.append((error, messages)),
        }
    )
    properties = {"sentBy": "analytics-vitally doctor", "version": VERSION}
    try:
        queued, message = client.track(user_id, TEST_EVENT, properties)
    except AnalyticsError as error:  # a user ID Vitally would refuse
        found.add("test event", PROBLEM, f"not sent: {error}", "give another test user ID")
        return False
    finally:
        client.shutdown(timeout=settings.timeout)
    what = f"one test event, {TEST_EVENT!r} for userId {user_id!r} (messageId {message['messageId']})"
    if queued:
        found.add(
            "test event",
            OK,
            f"sent {what}: the endpoint accepted it (2xx). It is real data: find it on that user in Vitally",
            f"delete the user {user_id!r} in Vitally if it was made for this test",
        )
        return True
    why = failures[0][0] if failures else "no answer"
    found.add("test event", PROBLEM, f"sent {what}: not accepted: {why}", "see the write key findings above")
    return False


__all__ = ["CONTROL_KEY", "TEST_EVENT", "TEST_USER", "check_write_key", "send_test"]
