"""A fast, minimal batch receiver for the benchmark, run in its own process.

    python bench/receiver.py            # prints "PORT <n>" once listening on 127.0.0.1

It accepts any POST on any path with any auth, answers 200 with one write on a
keep-alive HTTP/1.1 connection (TCP_NODELAY), and counts the messages in each
body: a JSON array (analytics_vitally) or ``{"batch": [...]}`` (Segment,
RudderStack, PostHog), gzip- or deflate-compressed or not. It does not validate
messages: it only has to be fast and count honestly.

The harness drives it over GET endpoints on the same port:

- ``/_bench/reset?delay=S&target=N``: zero the counters; answer each batch
  after ``S`` seconds; remember the monotonic time the count first reaches N.
- ``/_bench/stats``: the counters (JSON).
- ``/_bench/wait?timeout=S``: like stats, answered once the target is reached
  (or after ``S`` seconds).
- ``/_bench/largest``: the raw bytes of the request that carried the most
  messages since the reset (to replay it when measuring the rig's ceiling).

Times are ``time.monotonic()`` (CLOCK_MONOTONIC), comparable across processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import socket
import sys
import time
import zlib
from typing import Any, Dict, List, Optional, Set, Tuple
from urllib.parse import parse_qs, urlsplit

OK_RESPONSE = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"status":1}'
MAX_HEAD = 64 * 1024


def count_messages(body: bytes, encoding: str) -> int:
    """The number of messages in one batch body; ValueError if it is not a batch."""
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding == "deflate":
        body = zlib.decompress(body)
    elif encoding not in ("", "identity"):
        raise ValueError(f"unknown content-encoding {encoding!r}")
    data = json.loads(body)
    if isinstance(data, list):
        return len(data)
    if isinstance(data, dict) and isinstance(data.get("batch"), list):
        return len(data["batch"])
    raise ValueError("the body is neither a JSON array nor an object with a batch array")


def http_response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required"}.get(status, "Status")
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1") + body


class Counters:
    """Everything the receiver counted since the last reset."""

    def __init__(self) -> None:
        self.generation = 0
        self.reset(0.0, None)

    def reset(self, delay: float, target: Optional[int]) -> None:
        self.generation += 1
        self.delay = delay
        self.target = target
        self.messages = 0
        self.requests = 0
        self.errors = 0
        self.body_bytes = 0
        self.paths: Dict[str, int] = {}
        self.first_at: Optional[float] = None
        self.last_at: Optional[float] = None
        self.reached_at: Optional[float] = None
        self.largest: Tuple[int, bytes] = (0, b"")
        self.connections = 0
        """Connections that posted at least one request since the reset."""
        self.cpu_at_reset = time.process_time()
        self.reset_at = time.monotonic()
        self.target_reached = asyncio.Event()
        if target is None:
            self.target_reached.set()

    def add(self, count: int) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.messages += count
        if self.target is not None and self.reached_at is None and self.messages >= self.target:
            self.reached_at = now
            self.target_reached.set()

    def snapshot(self) -> Dict[str, Any]:
        return {
            "messages": self.messages,
            "requests": self.requests,
            "errors": self.errors,
            "body_bytes": self.body_bytes,
            "paths": self.paths,
            "connections": self.connections,
            "delay": self.delay,
            "target": self.target,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "reached_at": self.reached_at,
            "cpu_seconds": time.process_time() - self.cpu_at_reset,
            "wall_seconds": time.monotonic() - self.reset_at,
        }


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: parse requests, answer in order."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.buffer = bytearray()
        self.head: Optional[bytes] = None
        self.needed = 0
        self.transport: Optional[asyncio.Transport] = None
        self.waiting: Set[asyncio.Future[None]] = set()
        self.counted_in = 0
        """The counters generation in which this connection was last counted as one that posted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            if self.head is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEAD:
                        self._close()
                    return
                self.head = bytes(self.buffer[:end])
                del self.buffer[: end + 4]
                self.needed = _content_length(self.head)
                if self.needed < 0:
                    self._write(http_response(411, b'{"message":"Content-Length required"}'), close=True)
                    return
            if len(self.buffer) < self.needed:
                return
            body = bytes(self.buffer[: self.needed])
            del self.buffer[: self.needed]
            head, self.head = self.head, None
            self._handle(head, body)

    def _handle(self, head: bytes, body: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.rpartition(" ")[0]
        headers = _headers(lines[1:])
        close = headers.get("connection", "").lower() == "close"
        if method == "GET" and target.startswith("/_bench/"):
            self._control(target, close)
            return
        counters = self.counters
        counters.requests += 1
        if self.counted_in != counters.generation:
            self.counted_in = counters.generation
            counters.connections += 1
        counters.body_bytes += len(body)
        path = urlsplit(target).path
        counters.paths[path] = counters.paths.get(path, 0) + 1
        try:
            count = count_messages(body, headers.get("content-encoding", "").lower())
        except (ValueError, OSError, EOFError, zlib.error):
            counters.errors += 1
            self._write(http_response(400, b'{"message":"not a batch"}'), close)
            return
        if count > counters.largest[0]:
            counters.largest = (count, head + b"\r\n\r\n" + body)
        if counters.delay > 0:
            asyncio.get_running_loop().call_later(counters.delay, self._accept, counters.generation, count, close)
        else:
            self._accept(counters.generation, count, close)

    def _accept(self, generation: int, count: int, close: bool) -> None:
        if generation != self.counters.generation or self.transport is None or self.transport.is_closing():
            return  # the connection went away (or the counters were reset) before the answer
        self.counters.add(count)
        self._write(OK_RESPONSE, close)

    def _control(self, target: str, close: bool) -> None:
        parts = urlsplit(target)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        command = parts.path[len("/_bench/") :]
        counters = self.counters
        if command == "reset":
            target_count = int(query["target"]) if "target" in query else None
            counters.reset(float(query.get("delay", "0")), target_count)
            self._write(_json_response(counters.snapshot()), close)
        elif command == "stats":
            self._write(_json_response(counters.snapshot()), close)
        elif command == "wait":
            task = asyncio.ensure_future(self._wait(float(query.get("timeout", "60")), close))
            self.waiting.add(task)
            task.add_done_callback(self.waiting.discard)
        elif command == "largest":
            self._write(http_response(200, counters.largest[1], "application/octet-stream"), close)
        else:
            self._write(http_response(404, b'{"message":"unknown control command"}'), close)

    async def _wait(self, timeout: float, close: bool) -> None:
        counters = self.counters
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(counters.target_reached.wait(), timeout)
        self._write(_json_response(counters.snapshot()), close)

    def _write(self, data: bytes, close: bool = False) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        if close:
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.transport = None


def _headers(lines: List[str]) -> Dict[str, str]:
    headers: Dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def _content_length(head: bytes) -> int:
    """The Content-Length of a request head; 0 if absent, -1 if the body is chunked."""
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        return -1
    start = lower.find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    start += len(b"\r\ncontent-length:")
    end = lower.find(b"\r\n", start)
    return int(lower[start : end if end >= 0 else None])


def _json_response(value: Dict[str, Any]) -> bytes:
    return http_response(200, json.dumps(value).encode())


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    counters = Counters()

    def connection() -> Connection:
        return Connection(counters)

    server = await loop.create_server(connection, "127.0.0.1", port, backlog=256, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"PORT {bound}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
