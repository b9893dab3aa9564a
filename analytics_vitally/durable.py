"""The spool-backed queue: every rule about what a spool keeps, written once.

A client with ``spool=DIR`` queues through ``Durable`` instead of straight into its worker:

- ``put``: the message is on disk (``Spool.append``) before the call returns, then queued
  with its spool token as the entry's tag. The disk is the buffer: when the queue is full, the
  message stays on disk only (its token is put aside, 8 bytes in memory) and every later call's
  too, until the worker has read them all back, so they reach the queue in the order they came.
  A call is refused only when the spool refuses it (``max_spool_bytes``, a disk error).
- ``read`` (the worker's ``Feed``): what the spool holds that no queue does (messages put aside,
  retries that are due, messages left by processes that are gone) is read back into the queue; a
  record that is not a JSON object goes to the dead letters. Each message is in the queue once:
  one put aside was never queued, and its token goes back to the spool (``retry_later`` with no
  delay) only as there is room for it.
- ``deliver`` (the worker's ``Delivery``): the transport posts the messages and says, by position,
  which failed and why; delivered ones leave the spool, refused ones (a 4xx: trying again cannot
  help) go to the dead letters and to ``on_error``, and the rest stay on disk for a later try.
- ``let_go`` (the client was dropped): a batch gets one try, and the worker stops at the first
  that fails for a reason that may pass, so a dropped client holds no thread, socket or file
  through an outage: its messages are on disk.
- ``retire``: the spool's files are closed; what is left is for a later process.

``send_leftovers`` does the same without a worker, for ``analytics-vitally spool --send``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from array import array
from typing import Any, List, Optional, Sequence, Set, Tuple

from .delivery import Outcome, Sender, report
from .messages import MAX_BATCH_MESSAGES
from .settings import ErrorCallback, Settings
from .spool import Spool, Token
from .transport import NO_ANSWER_WAIT, Transport
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
        self.stop_retrying = sender.stop_retrying
        self._forget_put_aside()
        self.worker = Worker(self, settings, feed=self)

    def _forget_put_aside(self) -> None:
        self._lock = threading.Lock()  # guards the fields below but _lent (the reading thread's)
        self._spilling = False
        """Calls' messages stay on disk only (the queue was full) until all of these are read back."""
        self._disk_only = array("Q")  # their tokens, oldest first from _first
        self._first = 0
        self._lent: Set[Token] = set()
        """Tokens handed back to the spool (``retry_later``) for the next ``recover``, not read back yet."""

    # The caller's side. --------------------------------------------------------------

    def put(self, message: str) -> bool:
        """Write one encoded message to the spool, then queue it, or put it aside if the queue is full
        (it stays on disk only, and is read back in order); False (and counted) if the spool refuses it."""
        token = self.spool.append(message.encode())
        if token is None:  # the spool refused it (full, closed, disk error): it logged why
            return self.worker.refuse(logged=True)
        if not self._spilling and self.worker.put((message, token), False):
            return True
        return self._put_aside(message, token)

    def _put_aside(self, message: str, token: Token) -> bool:
        worker = self.worker
        with self._lock:
            if not self._spilling and worker.put((message, token), False):  # all read back meanwhile
                return True
            first = not self._spilling
            self._spilling = True
            self._disk_only.append(token)
            worker.put_aside(first)  # counted in this order, under this lock
        worker.backed_up()
        return True

    # The worker's side. --------------------------------------------------------------

    def due_in(self) -> float:
        return self._next_read - time.monotonic()

    def read(self, room: int) -> List[Any]:
        now = time.monotonic()
        self._next_read = now + READ_INTERVAL
        if room <= 0:
            return []
        try:
            self._lend(room)
            records = self.spool.recover(room)
            self._count_returned(records, exhausted=len(records) < room)
            found = readable(self.spool, records)
        except Exception:  # a bug must not kill the thread; what is on disk stays there
            log.exception("reading the spool %s raised", self.spool.directory)
            return []
        if found:
            self._next_read = now  # there may be more: look again after this batch
        return found

    def reset_after_fork(self) -> None:
        self._forget_put_aside()  # their records are in the parent's files, the parent's to send

    def _lend(self, room: int) -> None:
        """Hand the spool up to ``room`` of the oldest tokens put aside, for the ``recover`` that follows."""
        with self._lock:
            tokens, first = self._disk_only, self._first
            if first == len(tokens) and not self._lent:
                self._spilling = False  # all read back (and queued by now): calls may queue again
                return
            end = max(first, min(len(tokens), first + room - len(self._lent)))  # lent ones come back first
            lent = tokens[first:end].tolist()
            if end == len(tokens) or (end > 65536 and 2 * end > len(tokens)):
                del tokens[:end]  # memory: only what is not read back yet
                end = 0
            self._first = end
        if lent:
            self._lent.update(lent)
            self.spool.retry_later(lent, delay=0)

    def _count_returned(self, records: List[Tuple[Token, bytes]], exhausted: bool) -> None:
        """Count the lent tokens ``recover`` gave back. ``exhausted`` (it found fewer than asked): it took
        every due token, so a lent one it skipped is gone (its record acknowledged, or the spool closed)."""
        lent = self._lent
        if not lent:
            return
        if exhausted:
            back = len(lent)
            lent.clear()
        else:
            back = 0
            for token, _ in records:
                if token in lent:
                    lent.discard(token)
                    back += 1
        self.worker.taken_back(back)

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

    def let_go(self) -> bool:
        self._sender.stop_retrying("the client was dropped, and its messages stay in its spool for a later process")
        return True

    def retire(self) -> bool:
        self.spool.close()  # what is left stays on disk for a later process (the spool logs how many)
        return True


def settle(spool: Spool, batch: List[Entry], outcome: Outcome, on_error: Optional[ErrorCallback]) -> None:
    """After the transport delivered ``batch``'s messages: each leaves the spool or stays, by position.

    Delivered messages leave it; refused ones leave it for the dead letters and are reported (and
    counted in ``outcome.failed``); the others stay for a later try, with a WARNING: in a second
    (``NO_ANSWER_WAIT``) when Vitally did not answer (it is down or unreachable: the read-back resumes
    as soon as it is back, as the transport's tries do), else after the spool's ``retry_delay``.
    """
    failure_at: List[Optional[int]] = [None] * len(batch)
    for index, failure in enumerate(outcome.failures):
        failure_at[failure.start : failure.stop] = [index] * failure.count
    done: List[Token] = []
    later: List[Token] = []
    soon: List[Token] = []
    dead: List[str] = []
    for (message, token), number in zip(batch, failure_at):
        if number is None:
            done.append(token)
        elif outcome.failures[number].refused:
            done.append(token)
            dead.append(message)
        elif outcome.failures[number].error.status is None:
            soon.append(token)
        else:
            later.append(token)
    _record(spool, batch, done, later, dead, soon)
    for failure in outcome.failures:
        if failure.refused:
            outcome.failed += failure.count
            report(on_error, failure.error, [message for message, _ in batch[failure.start : failure.stop]])
        else:
            log.warning(
                "%d message(s) not delivered, kept in the spool for a later try: %s", failure.count, failure.error
            )


def _record(
    spool: Spool, batch: List[Entry], done: List[Token], later: List[Token], dead: List[str], soon: Sequence[Token] = ()
) -> None:
    try:
        if dead:
            spool.dead_letter(dead)
        spool.acknowledge(done)
        if later:
            spool.retry_later(later)
        if soon:
            spool.retry_later(soon, delay=NO_ANSWER_WAIT)
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
    spool = Spool(directory, scan_interval=0, owner=chosen.fingerprint, endpoint=chosen.url)
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
