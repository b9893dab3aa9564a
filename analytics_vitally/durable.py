"""The spool-backed queue: every rule about what a spool keeps, written once.

A client with ``spool=DIR`` queues through ``Durable`` instead of straight into its worker:

- ``put``: the message is on disk (``Spool.append``) before the call returns, then queued
  with its spool token as the entry's tag.
- ``read`` (the worker's ``Feed``): what the spool holds that no queue does (retries that are due,
  messages left by processes that are gone) is read back into the queue; a record that is not a
  JSON object goes to the dead letters.
- ``deliver`` (the worker's ``Delivery``): the transport posts the messages and says, by position,
  which failed and why; delivered ones leave the spool, refused ones (a 4xx: trying again cannot
  help) go to the dead letters and to ``on_error``, and the rest stay on disk for a later try.
- ``retire``: the spool's files are closed; what is left is for a later process.

``send_leftovers`` does the same without a worker, for ``analytics-vitally spool --send``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, List, Optional, Tuple

from .delivery import Outcome, Sender, report
from .messages import MAX_BATCH_MESSAGES
from .settings import ErrorCallback, Settings
from .spool import Spool, Token
from .transport import Transport
from .worker import Worker

log = logging.getLogger("analytics_vitally")

READ_INTERVAL = 1.0
"""Seconds between two looks into the spool for messages to send again or left by dead processes."""

Entry = Tuple[str, Token]
"""A queued message and its spool token."""


class Durable:
    """A worker whose entries are also on disk: the queue, the ``Delivery`` and the ``Feed`` of a spool."""

    def __init__(self, spool: Spool, sender: Sender, settings: Settings) -> None:
        self.spool = spool
        self._sender = sender
        self._on_error = settings.on_error
        self._next_read = 0.0  # the first look is at once: earlier processes' leftovers
        self.get_ready = sender.get_ready
        self.release = sender.release
        self.abort = sender.abort
        self.worker = Worker(self, settings, feed=self)

    # The caller's side. --------------------------------------------------------------

    def put(self, message: str) -> bool:
        """Write one encoded message to the spool, then queue it; False (and counted) if either refuses."""
        worker = self.worker
        if not worker.has_room():  # said before a byte is written: the queue is full or closed
            return worker.refuse()
        token = self.spool.append(message.encode())
        if token is None:  # the spool refused it (full, closed, disk error): it logged why
            return worker.refuse(logged=True)
        if worker.put((message, token)):
            return True
        self.spool.acknowledge([token])  # the queue filled (or closed) meanwhile: refused, so not kept either
        return False

    # The worker's side. --------------------------------------------------------------

    def due_in(self) -> float:
        return self._next_read - time.monotonic()

    def read(self, room: int) -> List[Any]:
        now = time.monotonic()
        self._next_read = now + READ_INTERVAL
        if room <= 0:
            return []
        try:
            found = readable(self.spool, self.spool.recover(room))
        except Exception:  # a bug must not kill the thread; what is on disk stays there
            log.exception("reading the spool %s raised", self.spool.directory)
            return []
        if found:
            self._next_read = now  # there may be more: look again after this batch
        return found

    def deliver(self, batch: List[Any]) -> Outcome:
        messages = [message for message, _ in batch]
        try:
            outcome = self._sender.deliver(messages)
        except Exception:  # the messages stay in the spool: at worst they are sent again, never lost
            log.exception("%d message(s) not delivered, kept in the spool: delivering them raised", len(batch))
            _record(self.spool, batch, [], [token for _, token in batch], [])
            return Outcome()
        settle(self.spool, batch, outcome, self._on_error)
        return outcome

    def retire(self) -> bool:
        self.spool.close()  # what is left stays on disk for a later process (the spool logs how many)
        return True


def settle(spool: Spool, batch: List[Entry], outcome: Outcome, on_error: Optional[ErrorCallback]) -> None:
    """After the transport delivered ``batch``'s messages: each leaves the spool or stays, by position.

    Delivered messages leave it; refused ones leave it for the dead letters and are reported (and
    counted in ``outcome.failed``); the others stay for a later try, with a WARNING.
    """
    failure_at: List[Optional[int]] = [None] * len(batch)
    for index, failure in enumerate(outcome.failures):
        failure_at[failure.start : failure.stop] = [index] * failure.count
    done: List[Token] = []
    later: List[Token] = []
    dead: List[str] = []
    for (message, token), number in zip(batch, failure_at):
        if number is None:
            done.append(token)
        elif outcome.failures[number].refused:
            done.append(token)
            dead.append(message)
        else:
            later.append(token)
    _record(spool, batch, done, later, dead)
    for failure in outcome.failures:
        if failure.refused:
            outcome.failed += failure.count
            report(on_error, failure.error, [message for message, _ in batch[failure.start : failure.stop]])
        else:
            log.warning(
                "%d message(s) not delivered, kept in the spool for a later try: %s", failure.count, failure.error
            )


def _record(spool: Spool, batch: List[Entry], done: List[Token], later: List[Token], dead: List[str]) -> None:
    try:
        if dead:
            spool.dead_letter(dead)
        spool.acknowledge(done)
        if later:
            spool.retry_later(later)
    except Exception:  # the messages stay in the spool: at worst they are sent again, never lost
        log.exception("the spool could not record what became of %d message(s)", len(batch))


def readable(spool: Spool, records: List[Tuple[Token, bytes]]) -> List[Entry]:
    """Recovered records as ``(message, token)``; one that is not a JSON object in UTF-8 (damaged on
    disk in a way its checksum missed, or written by something else) goes to the dead letters."""
    good: List[Entry] = []
    damaged: List[Tuple[Token, bytes]] = []
    for token, data in records:
        try:
            text = data.decode()
            if not isinstance(json.loads(text), dict):
                raise ValueError("not a JSON object")
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            damaged.append((token, data))
            continue
        good.append((text, token))
    if damaged:
        log.error(
            "spool %s: %d record(s) are not a JSON message (damaged?): moved to the dead letters",
            spool.directory,
            len(damaged),
        )
        spool.dead_letter([data for _, data in damaged])
        spool.acknowledge([token for token, _ in damaged])
    return good


def send_leftovers(directory: str, **settings: Any) -> Tuple[int, int, int]:
    """Deliver what processes that are gone left in the spool ``directory``; ``(sent, refused, kept)``.

    Only files written for the same destination (the endpoint and the write key the settings give,
    see ``Settings.fingerprint``), or by versions that did not record one, are sent. Refused messages
    go to the spool's dead letters; ``kept`` counts messages that could not be delivered for a reason
    that may pass (they stay, and it stops there). Settings as ``Client``'s.

        sent, refused, kept = send_leftovers("/var/spool/vitally", subdomain="acme")
    """
    chosen = Settings(**{**settings, "spool": directory}).resolved()
    transport = Transport(chosen)
    spool = Spool(directory, scan_interval=0, owner=chosen.fingerprint)
    sent = refused = 0
    try:
        while True:
            found = spool.recover(MAX_BATCH_MESSAGES)
            if not found:
                return sent, refused, 0
            batch = readable(spool, found)  # a damaged record goes to the dead letters, as the worker's read does
            if not batch:
                continue
            outcome = transport.deliver([message for message, _ in batch])
            settle(spool, batch, outcome, chosen.on_error)
            sent, refused = sent + outcome.sent, refused + outcome.failed
            kept = sum(failure.count for failure in outcome.failures if not failure.refused)
            if kept:
                return sent, refused, kept
    finally:
        spool.close()


__all__ = ["READ_INTERVAL", "Durable", "readable", "send_leftovers", "settle"]
