"""The client: one method per Vitally message type, and the delivery lifecycle."""

from __future__ import annotations

import logging
import os
import time
import weakref
from dataclasses import replace
from datetime import datetime
from typing import Any, Callable, Dict, Mapping, Optional, Tuple
from uuid import UUID

from . import lifecycle, sigterm
from .delivery import Reporting, Stats
from .durable import Durable
from .encoding import encode, format_timestamp, now_timestamp
from .errors import InvalidMessageError, InvalidTypeError
from .messages import complete, normalize_ids, parameter, problems, wire_field
from .scope import current
from .settings import Settings, check_names
from .spool import Spool
from .transport import Transport
from .worker import DROP_LOG_INTERVAL, Worker

log = logging.getLogger("analytics_vitally")

Message = Dict[str, Any]
"""A message as a dict: Vitally's wire field names (``userId``, ``traits``...) and ``type``."""
Result = Tuple[bool, Message]
"""``(queued, message)``: whether the message was accepted, and the message dict that was checked and
encoded (wire field names; values inside traits and properties as given, such as a Decimal)."""


class Client:
    """Sends messages to Vitally's Analytics API in batches from a background thread.

        client = Client("my-token", subdomain="acme")
        client.track("32", "scored-goal", {"minute": 14})
        client.flush()

    Settings are keyword arguments, the fields of ``Settings`` (each one: docs/guides/settings.md).
    Every method checks its message at once and raises ``InvalidMessageError``
    (a ``ValueError``) or ``InvalidTypeError`` (a ``TypeError``) naming the bad
    parameter; nothing is queued then.
    """

    def __init__(self, write_key: Optional[str] = None, **settings: Any) -> None:
        check_names(f"{type(self).__name__}()", settings)
        self.settings = chosen = Settings(write_key=write_key, **settings).resolved()
        self._before_send = chosen.before_send
        self._hook_failures = 0  # since the last log line about them
        self._hook_logged_at = -DROP_LOG_INTERVAL
        self._transport = Transport(chosen)
        # The way of every message, chosen once: checked and encoded here; then queued in memory and
        # reported when it fails for good (Reporting), or first written to the spool (Durable).
        durable: Optional[Durable] = None
        if chosen.spool is not None and chosen.send:
            spool = Spool(
                chosen.spool,
                max_bytes=chosen.max_spool_bytes,
                fsync=chosen.spool_fsync,
                owner=chosen.fingerprint,
                endpoint=chosen.url,
            )
            durable = Durable(spool, self._transport, chosen)
            self._worker = durable.worker
        else:
            self._worker = Worker(Reporting(self._transport, chosen.on_error), chosen)
        self._max_message_bytes = chosen.max_batch_bytes - 2
        self._dispatch: Callable[[str], bool]
        if not chosen.send:
            self._dispatch = _not_sent
        elif chosen.sync_mode:
            self._dispatch = self._worker.deliver_now
        elif durable is not None:
            self._dispatch = durable.put
        else:
            self._dispatch = self._worker.put
        _configure_logging(self.settings)
        # Dropped by the program: the worker delivers what is left, then ends its threads and lets go
        # of its connections and spool files (the lifecycle module keeps it until then).
        weakref.finalize(self, self._worker.retire).atexit = False
        if self.settings.drain_on_sigterm and self.settings.send:
            sigterm.drain_on_sigterm()
        if durable is not None:
            self._worker.start()  # what earlier processes left is sent now, with no call needed

    def __repr__(self) -> str:
        target = self.settings.url if self.settings.send else "nowhere (send=False)"
        return f"<analytics_vitally.Client sending to {target}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """At the end of a ``with`` block: deliver what is queued and stop the threads, within ``exit_timeout``."""
        self.shutdown(timeout=self.settings.exit_timeout)

    # One method per message type. ---------------------------------------------------

    def organization(
        self,
        organization_id: Any,
        traits: Optional[Message] = None,
        *,
        timestamp: Optional[datetime] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """Send an ``organization`` message: create or update an organization's traits.

            client.organization("org-1", {"name": "World Cup"})
        """
        return self._submit(
            {"type": "organization", "organizationId": organization_id, "traits": _or_empty(traits)},
            timestamp,
            message_id,
            (),
        )

    def group(
        self,
        account_id: Any,
        traits: Optional[Message] = None,
        *,
        organization_id: Any = None,
        timestamp: Optional[datetime] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """Send an ``account`` message: create or update an account, optionally in an organization.

            client.group("acct-1", {"name": "Argentina"}, organization_id="org-1")
        """
        return self._submit(
            {
                "type": "account",
                "accountId": account_id,
                "organizationId": organization_id,
                "traits": _or_empty(traits),
            },
            timestamp,
            message_id,
            _ORGANIZATION,
        )

    def identify(
        self,
        user_id: Any,
        traits: Optional[Message] = None,
        *,
        account_id: Any = None,
        organization_id: Any = None,
        timestamp: Optional[datetime] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """Send a ``user`` message: a user's traits, and the account or organization they belong to.

            client.identify("32", {"name": "Lionel Messi"}, account_id="acct-1")
        """
        return self._submit(
            {
                "type": "user",
                "userId": user_id,
                "accountId": account_id,
                "organizationId": organization_id,
                "traits": _or_empty(traits),
            },
            timestamp,
            message_id,
            _ACCOUNT_AND_ORGANIZATION,
        )

    def track(
        self,
        user_id: Any = None,
        event: Optional[str] = None,
        properties: Optional[Message] = None,
        *,
        account_id: Any = None,
        organization_id: Any = None,
        timestamp: Optional[datetime] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """Send a ``track`` message: an event a user (or an account, or an organization) did.

            client.track("32", "scored-goal", {"minute": 14})
            client.track(None, "plan-renewed", account_id="acct-1")
        """
        return self._submit(
            {
                "type": "track",
                "userId": user_id,
                "accountId": account_id,
                "organizationId": organization_id,
                "event": event,
                "properties": _or_empty(properties),
            },
            timestamp,
            message_id,
            _ACCOUNT_AND_ORGANIZATION,
        )

    def unlink(
        self,
        user_id: Any,
        account_id: Any,
        *,
        timestamp: Optional[datetime] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """Send an ``unlink`` message: remove a user from an account.

            client.unlink("32", "acct-1")
        """
        return self._submit(
            {"type": "unlink", "userId": user_id, "accountId": account_id}, timestamp, message_id, ()
        )

    def custom_object_instance(
        self,
        external_id: Any,
        custom_object_id: Any,
        traits: Optional[Message] = None,
        *,
        name: Optional[str] = None,
        account_id: Any = None,
        organization_id: Any = None,
        timestamp: Optional[datetime] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """Send a ``customobjectinstance`` message: a record of a custom object (a deal, say).

            client.custom_object_instance("deal-9", "co-123", {"stage": "won"}, name="Q1", account_id="acct-1")
        """
        return self._submit(
            {
                "type": "customobjectinstance",
                "externalId": external_id,
                "customObjectId": custom_object_id,
                "name": name,
                "accountId": account_id,
                "organizationId": organization_id,
                "traits": _or_empty(traits),
            },
            timestamp,
            message_id,
            _ACCOUNT_AND_ORGANIZATION,
        )

    def enqueue(self, message: Mapping[str, Any]) -> Result:
        """Send one message given in Vitally's wire form: camelCase fields and ``type``.

            client.enqueue({"type": "track", "userId": "32", "event": "scored-goal"})

        Checked with the same rules as the methods, and errors name the wire field
        (``userId``, ``properties['price']``). Top-level ``None`` fields are left out, an
        absent ``traits``/``properties`` becomes ``{}``, integer IDs become strings, a
        ``messageId`` is added when absent, and a ``timestamp`` (any ISO 8601 string, or a
        datetime) is sent in Vitally's UTC form; none is added when absent (Vitally then
        dates the message when it arrives).
        """
        if _process.pid != _getpid():  # a fork that skipped the at-fork hooks (uWSGI forks from C)
            lifecycle.check_fork()
        filled = complete(message)
        if "messageId" not in filled:
            filled["messageId"] = _new_message_id()
        return self._enqueue(filled, wire_field)

    def _submit(
        self, fields: Message, timestamp: Optional[datetime], message_id: Optional[str], ids: Tuple[str, ...]
    ) -> Result:
        """Complete a message made by a method: the context's IDs among ``ids`` it lacks (and a track's
        properties), no None fields, its ID and timestamp; then check, encode and queue it."""
        if _process.pid != _getpid():  # a fork that skipped the at-fork hooks (uWSGI forks from C)
            lifecycle.check_fork()
        scope = current.get()
        if scope is not None:
            scope.fill(fields, ids)
        message = {key: value for key, value in fields.items() if value is not None}
        message["messageId"] = _new_message_id() if message_id is None else _message_id(message_id)
        message["timestamp"] = now_timestamp() if timestamp is None else _timestamp(timestamp)
        return self._enqueue(message, parameter, stamped=True)

    def _enqueue(self, message: Message, name: Callable[[str], str], stamped: bool = False) -> Result:
        """Check, encode once, and queue (or send) a complete wire-format message.

        ``name`` turns wire field names into the names errors use; ``stamped`` means
        ``messageId`` and ``timestamp`` were made by this client.
        """
        found = problems(message, name, stamped)
        if found:  # integer IDs are fine: make them strings, then look again
            normalize_ids(message, name)
            found = problems(message, name, stamped)
            if found:
                raise found[0]
        if self._before_send is not None:
            return self._through_hook(message)
        data = encode(message, name)  # (as _encode does, inline: the hot path saves a call)
        if len(data) > self._max_message_bytes:
            raise self._too_big(data)
        return self._dispatch(data), message

    def _encode(self, message: Message, name: Callable[[str], str]) -> str:
        data = encode(message, name)
        if len(data) > self._max_message_bytes:
            raise self._too_big(data)
        return data

    def _too_big(self, data: str) -> InvalidMessageError:
        return InvalidMessageError(
            "message",
            f"is {len(data)} bytes as JSON, more than max_batch_bytes={self.settings.max_batch_bytes} allows",
        )

    def _through_hook(self, message: Message) -> Result:
        """``before_send`` sees the checked message; what it returns is checked again, encoded and queued.

        None drops the message; a hook that raises, or returns a message breaking the rules, fails
        closed: nothing is sent (sending the original would defeat a scrubbing hook). Each is
        counted in ``stats().filtered``; failures are logged at ERROR, at most every 10 s.
        """
        assert self._before_send is not None
        try:
            returned = self._before_send(message)
        except Exception as error:
            self._filtered(f"before_send raised {type(error).__name__}: {error}", error)
            return False, message
        if returned is None:
            self._worker.count_filtered()
            return False, message
        try:
            changed = returned
            if changed.__class__ is not dict or any(value is None for value in changed.values()):
                changed = complete(changed)  # as enqueue() completes a message: no None fields
            found = problems(changed, wire_field)
            if found:  # what enqueue() would fix first: a timestamp in another ISO form, integer IDs...
                if changed is returned:
                    changed = complete(changed)
                normalize_ids(changed, wire_field)
                found = problems(changed, wire_field)
                if found:
                    raise found[0]
            data = self._encode(changed, wire_field)
        except InvalidMessageError as error:
            self._filtered(f"before_send returned a message that breaks Vitally's rules: {error}", None)
            return False, message
        return self._dispatch(data), changed

    def _filtered(self, why: str, error: Optional[BaseException]) -> None:
        self._worker.count_filtered()
        self._hook_failures += 1
        now = time.monotonic()
        if now - self._hook_logged_at < DROP_LOG_INTERVAL:
            return
        count, self._hook_failures, self._hook_logged_at = self._hook_failures, 0, now
        shown = (type(error), error, error.__traceback__) if error is not None else None
        log.error("%d message(s) not sent: %s", count, why, exc_info=shown)

    # Lifecycle. -----------------------------------------------------------------------

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every message queued before the call was sent or failed for good.

        Returns False if ``timeout`` seconds passed first.

            client.flush(timeout=5)
        """
        return self._worker.flush(timeout)

    def send_now(self) -> None:
        """Start sending everything queued so far, without waiting for it (as if upload_interval had passed).

            client.send_now()   # a burst is ready: send it as one batch now
        """
        self._worker.send_now()

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Deliver what is queued, then stop the worker threads; False if ``timeout`` passed first.

        After a timeout, delivery goes on in the background (and at exit, within
        ``exit_timeout``). The client can be used again: its threads start on the next message.

            client.shutdown(timeout=5)
        """
        return self._worker.shutdown(timeout)

    def join(self) -> None:
        """Deliver what is queued and stop the worker threads (``shutdown()`` without a timeout)."""
        self.shutdown()

    def stats(self) -> Stats:
        """A snapshot of the counters: enqueued, sent, failed, dropped, retried, batches, queue_depth."""
        return replace(self._worker.stats(), retried=self._transport.retries)  # counted as they happen


_ORGANIZATION = ("organizationId",)
_ACCOUNT_AND_ORGANIZATION = ("accountId", "organizationId")
"""The optional IDs a method's message takes, which an ``analytics_vitally.context()`` fills when not given."""

_random = lifecycle.message_ids  # seeded again in a forked child
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _new_message_id() -> str:
    """A random (version 4) UUID string, about three times faster than ``str(uuid4())``.

    No system call, so the calling thread keeps the GIL (os.urandom would hand it to the worker).
    """
    hex = f"{_random.getrandbits(128):032x}"
    return f"{hex[:8]}-{hex[8:12]}-4{hex[13:16]}-{_VARIANT[hex[16]]}{hex[17:20]}-{hex[20:]}"


def _not_sent(data: str) -> bool:
    return True  # send=False: checked and encoded, never sent


def _or_empty(value: Optional[Message]) -> Message:
    return {} if value is None else value


def _message_id(value: Any) -> str:
    if isinstance(value, UUID):
        try:
            return str(value)
        except Exception as error:  # a subclass's own __str__
            raise InvalidTypeError("message_id", f"could not be made a string: {type(error).__name__}") from None
    if not isinstance(value, str):
        raise InvalidTypeError("message_id", f"must be a string, not {type(value).__name__}")
    if not str.__len__(value):  # str's own: a subclass's __len__ or __bool__ may raise
        raise InvalidMessageError("message_id", "must not be empty")
    return value


def _timestamp(value: Any) -> str:
    if not isinstance(value, datetime):
        raise InvalidTypeError(
            "timestamp", f"must be a datetime, not {type(value).__name__} (naive datetimes are taken as UTC)"
        )
    try:
        return format_timestamp(value)
    except ValueError as error:  # out of range in UTC, or its tzinfo failed: the text says which
        raise InvalidMessageError("timestamp", str(error)) from None


def _configure_logging(settings: Settings) -> None:
    if settings.log_handler is not None and settings.log_handler not in log.handlers:
        log.addHandler(settings.log_handler)
    if settings.debug:
        log.setLevel(logging.DEBUG)
        if not log.handlers and not logging.getLogger().handlers:
            log.addHandler(logging.StreamHandler())


_getpid = os.getpid
_process = lifecycle.PROCESS


__all__ = ["Client", "Message", "Result"]
