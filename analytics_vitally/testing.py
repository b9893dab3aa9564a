"""A local stand-in for Vitally's batch endpoint, for development and tests.

    from analytics_vitally.testing import Receiver

    with Receiver(token="test-token") as receiver:
        client = Client("test-token", host=receiver.url)
        client.track("32", "scored-goal")
        client.flush()
        assert receiver.messages[0]["event"] == "scored-goal"

It answers like Vitally: 401 unless ``Authorization: Basic <token>``; 400 with a
JSON body naming each problem (and the index of its message) unless the body is
a JSON array of 1 to 100 messages that pass the library's own rules
(``analytics_vitally.messages``); otherwise 200 ``{"message":"Success."}``.
A 400 rejects the whole batch. ``GET /messages`` returns what it accepted.

With pytest, the ``vitally_receiver`` fixture gives a started ``Receiver``.

``capture()`` needs no server: under it, the module-level API (or the client given)
checks, completes and encodes each message as in production, then keeps it in memory;
no thread starts and no socket opens, ``configure()`` included, and the module settings
and default client are put back after it. The ``vitally_capture`` fixture gives one.

    with capture() as sent:
        analytics.track("32", "scored-goal", {"minute": 14})
    sent.assert_tracked("scored-goal", user_id="32", properties={"minute": 14})
"""

from __future__ import annotations

import gzip
import json
import socket
import struct
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Union

import analytics_vitally

from . import default
from .client import Client
from .messages import MAX_BATCH_MESSAGES, field_of, problems
from .settings import BATCH_PATH, SETTING_NAMES

if TYPE_CHECKING:
    from .aio import AsyncClient

__all__ = ["Captured", "Receiver", "Reply", "Request", "capture"]


@dataclass
class Request:
    """One request as the receiver got it."""

    method: str
    path: str
    headers: Dict[str, str]
    body: bytes
    messages: Optional[List[Any]] = None
    """The decoded JSON array, when the body was one."""


@dataclass
class Reply:
    """An answer a ``respond`` hook can give instead of the receiver's own."""

    status: int = 200
    body: Any = field(default_factory=lambda: {"message": "Success."})
    headers: Dict[str, str] = field(default_factory=dict)
    reset: bool = False
    """Close the connection abruptly without answering."""
    accept: bool = False
    """Also record the batch's messages as accepted (a 2xx whose answer got lost, say)."""


Respond = Callable[[Request], Optional[Reply]]


class Receiver:
    """A Vitally-compatible batch endpoint on 127.0.0.1; use it as a context manager.

    ``respond(request)``, if given, runs first for every batch request: returning a
    ``Reply`` answers with it (to inject faults), returning None lets the receiver
    answer as Vitally would.
    """

    def __init__(
        self,
        token: str = "test-token",
        *,
        port: int = 0,
        respond: Optional[Respond] = None,
        save: Optional[IO[str]] = None,
        echo: Optional[Callable[[Dict[str, Any]], None]] = None,
    ) -> None:
        self.token = token
        self.respond = respond
        self.messages: List[Dict[str, Any]] = []
        """Every message accepted, in order (a retried message appears each time it was accepted)."""
        self.requests: List[Request] = []
        """Every request received, accepted or not."""
        self._save = save
        self._echo = echo
        self._lock = threading.Condition()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.receiver = self
        self._thread: Optional[threading.Thread] = None

    def __repr__(self) -> str:
        return f"<Receiver {self.url}: {len(self.messages)} messages>"

    @property
    def url(self) -> str:
        """The base URL to give a client as ``host``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def port(self) -> int:
        """The port it listens on (the one given, or the free one picked for ``port=0``)."""
        return int(self._server.server_address[1])

    def start(self) -> Receiver:
        """Start answering on a daemon thread; returns the receiver (``with Receiver()`` calls it)."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="vitally-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the listening socket (the end of a ``with`` block calls it)."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` messages were accepted; False if ``timeout`` passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self.messages) >= count, timeout)

    def message_ids(self) -> List[str]:
        """The messageId of every accepted message, duplicates included."""
        with self._lock:
            return [str(message.get("messageId")) for message in self.messages]

    def _record_request(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _accept(self, messages: List[Dict[str, Any]]) -> None:
        with self._lock:
            self.messages.extend(messages)
            if self._save is not None:
                self._save.writelines(json.dumps(message) + "\n" for message in messages)
                self._save.flush()
            self._lock.notify_all()
        if self._echo is not None:
            for message in messages:
                self._echo(message)

    def answer(self, request: Request) -> Reply:
        """How Vitally would answer ``request`` (the respond hook aside)."""
        if request.headers.get("authorization") != f"Basic {self.token}":
            return Reply(401, {"message": "Unauthorized"})
        batch = request.messages
        if not isinstance(batch, list):
            return Reply(400, {"message": "Bad Request", "errors": [{"error": "the body must be a JSON array"}]})
        if not 1 <= len(batch) <= MAX_BATCH_MESSAGES:
            problem = f"a batch holds 1 to {MAX_BATCH_MESSAGES} messages, not {len(batch)}"
            return Reply(400, {"message": "Bad Request", "errors": [{"error": problem}]})
        errors = [
            {"index": index, "field": problem.field, "error": str(problem)}
            for index, message in enumerate(batch)
            for problem in problems(message)
        ]
        if errors:
            return Reply(400, {"message": "Bad Request", "errors": errors})
        return Reply(accept=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client gone mid-request is no news
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        receiver = self.server.receiver
        if self.path.rstrip("/") == "/messages":
            with receiver._lock:
                self._reply(Reply(200, list(receiver.messages)))
        else:
            self._reply(Reply(404, {"message": "Not Found"}))

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = Request("POST", self.path, {key.lower(): value for key, value in self.headers.items()}, body)
        try:
            if request.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            request.messages = json.loads(body)
        except ValueError:
            pass
        receiver._record_request(request)
        reply = receiver.respond(request) if receiver.respond is not None else None
        if reply is None:
            reply = receiver.answer(request) if self.path == BATCH_PATH else Reply(404, {"message": "Not Found"})
        if reply.accept and isinstance(request.messages, list):
            receiver._accept(request.messages)
        if reply.reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        self._reply(reply)

    def _reply(self, reply: Reply) -> None:
        payload = json.dumps(reply.body).encode()
        head = [f"HTTP/1.1 {reply.status} {self.responses.get(reply.status, ('',))[0]}"]
        headers = {"Content-Type": "application/json", "Content-Length": str(len(payload)), **reply.headers}
        head.extend(f"{key}: {value}" for key, value in headers.items())
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)


# capture(): a Vitally in memory. ------------------------------------------------------------------

class Captured:
    """What was sent under ``capture()``: ``messages``, the wire-form dicts in order, and assertions
    that fail with a message listing what was sent."""

    def __init__(self) -> None:
        self.messages: List[Dict[str, Any]] = []

    def _keep(self, data: str) -> bool:
        self.messages.append(json.loads(data))  # exactly what would have been sent
        return True

    def clear(self) -> None:
        """Forget what was captured so far."""
        self.messages.clear()

    def assert_nothing_sent(self) -> None:
        """AssertionError listing what was sent, if anything was."""
        assert not self.messages, f"expected nothing sent; sent:\n{self._shown()}"

    def assert_tracked(self, event: str, **fields: Any) -> Dict[str, Any]:
        """The track ``event`` that was sent with these fields (``user_id=``, ``account_id=``, ``properties=``...;
        ``properties`` match when they hold at least the items given). AssertionError naming it if none was."""
        return self._find("track", "event", event, fields, "properties")

    def assert_identified(self, user_id: Any, **traits: Any) -> Dict[str, Any]:
        """The ``user`` message for ``user_id`` whose traits hold at least ``traits``."""
        return self._find("user", "userId", str(user_id), {"traits": traits}, "traits")

    def assert_grouped(self, account_id: Any, **traits: Any) -> Dict[str, Any]:
        """The ``account`` message for ``account_id`` whose traits hold at least ``traits``."""
        return self._find("account", "accountId", str(account_id), {"traits": traits}, "traits")

    def _find(self, kind: str, key: str, value: Any, fields: Dict[str, Any], subset: str) -> Dict[str, Any]:
        wanted = {field_of(name): given for name, given in fields.items()}
        for message in self.messages:
            if message.get("type") == kind and message.get(key) == value and _matches(message, wanted, subset):
                return message
        details = ", ".join(f"{name}={given!r}" for name, given in wanted.items() if given != {})
        raise AssertionError(
            f"no {kind} message with {key}={value!r}{', ' + details if details else ''} was sent; "
            f"sent {len(self.messages)}:\n{self._shown()}"
        )

    def _shown(self) -> str:
        if not self.messages:
            return "  (nothing)"
        return "\n".join(f"  {json.dumps(message, sort_keys=True)}" for message in self.messages[:50])


def _matches(message: Dict[str, Any], wanted: Dict[str, Any], subset: str) -> bool:
    for name, given in wanted.items():
        found = message.get(name)
        if name == subset:
            if not isinstance(found, dict) or any(found.get(key, _MISSING) != item for key, item in given.items()):
                return False
        elif found != (str(given) if name.endswith("Id") and isinstance(given, int) else given):
            return False
    return True


_MISSING = object()


@contextmanager
def capture(client: Union[Client, AsyncClient, None] = None) -> Iterator[Captured]:
    """Under it, messages are checked, completed and encoded as in production, then kept in ``.messages``.

        with capture() as sent:                      # the module-level API
            analytics.track("32", "scored-goal")
        sent.assert_tracked("scored-goal", user_id="32")

        with capture(client) as sent: ...            # a Client or an AsyncClient

    The same errors as in production (a bad call raises ``InvalidMessageError``) and ``before_send``
    applies. No thread starts and no socket opens. Without a client, every default client made in the
    block (at the first call, from the module settings as they are then, or by ``configure()``) is
    made with ``send=False`` (no write key needed) and keeps its messages here; at the end, the module
    settings and the default client are put back as they were before it.

    Captures of one target nest in one thread (the inner one gets the messages until it ends). The
    module-level API is the process's: a capture of it, or of one client, while another thread holds
    one raises RuntimeError rather than mixing the two threads' messages.
    """
    captured = Captured()
    if client is None:
        with _held(analytics_vitally, "the module-level API", lambda: _capture_module(captured)):
            yield captured
    else:
        target = client if isinstance(client, Client) else client.client  # an AsyncClient: the Client underneath
        with _held(target, repr(target), lambda: _capture_client(target, captured)):
            yield captured


def _capture_module(captured: Captured) -> Callable[[], None]:
    """Make every default client from now on a capturing one; returns what puts the module back."""
    module = vars(analytics_vitally)

    def make(settings: Dict[str, Any]) -> Client:
        made = Client(**{**settings, "send": False, "sync_mode": False, "spool": ""})
        made._dispatch = captured._keep
        return made

    with default.lock.get():
        settings = {name: module[name] for name in SETTING_NAMES}
        before = default.client, default.told_late, default.capturing
        # None: made at the first call, so settings assigned in the block apply to it as they would in production
        default.client, default.told_late, default.capturing = None, False, make

    def put_back() -> None:
        with default.lock.get():
            module.update(settings)  # as assigned, past the module's late-setting warning
            default.client, default.told_late, default.capturing = before

    return put_back


def _capture_client(target: Client, captured: Captured) -> Callable[[], None]:
    dispatch = target._dispatch
    target._dispatch = captured._keep

    def put_back() -> None:
        target._dispatch = dispatch

    return put_back


class _Hold:
    """One open ``capture()`` of a target: the thread that opened it, and what puts back what it replaced."""

    __slots__ = ("put_back", "thread")

    def __init__(self, put_back: Callable[[], None]) -> None:
        self.thread = threading.get_ident()
        self.put_back = put_back


_holds: Dict[object, List[_Hold]] = {}
"""The captures open now, per target (the package, or a Client), in the order they were opened."""
_holds_lock = threading.Lock()


@contextmanager
def _held(target: object, name: str, take: Callable[[], Callable[[], None]]) -> Iterator[None]:
    """``take()`` captures ``target`` for the block and returns what undoes it; the last capture of a
    target to end puts back what was there before the first, whatever order they end in."""
    with _holds_lock:
        opened = _holds.get(target)
        if opened and opened[0].thread != threading.get_ident():
            raise RuntimeError(
                f"capture() of {name} is already open in another thread, and its messages would mix with this "
                "one's: capture in one thread at a time, or give each thread its own Client and capture(client)"
            )
        hold = _Hold(take())
        _holds.setdefault(target, []).append(hold)
    try:
        yield
    finally:
        with _holds_lock:
            holds = _holds[target]
            index = holds.index(hold)
            if index == len(holds) - 1:
                hold.put_back()
            else:  # ended before a capture opened inside it (two tasks' blocks overlapping): that one puts back
                holds[index + 1].put_back = hold.put_back
            del holds[index]
            if not holds:
                del _holds[target]
