"""What the harness and the measuring subprocesses share: the receiver, its control, the ceiling loop, RSS."""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

BENCH_DIR = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def start_receiver() -> Tuple[subprocess.Popen[str], int]:
    """Start bench/receiver.py in its own process; (the process, its port)."""
    process = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "receiver.py")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        process.kill()
        raise RuntimeError(f"the receiver did not start (it printed {line!r})")
    return process, int(line.split()[1])


class ReceiverControl:
    """The receiver's GET control endpoints (see receiver.py)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def _get(self, path: str, timeout: float = 30.0) -> bytes:
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"receiver answered {response.status} to {path}: {body[:200]!r}")
            return body
        finally:
            connection.close()

    def _get_json(self, path: str, timeout: float = 30.0) -> Dict[str, Any]:
        value = json.loads(self._get(path, timeout))
        assert isinstance(value, dict)
        return value

    def reset(self, delay: float = 0.0, target: Optional[int] = None) -> Dict[str, Any]:
        query = f"delay={delay}" + ("" if target is None else f"&target={target}")
        return self._get_json(f"/_bench/reset?{query}")

    def stats(self) -> Dict[str, Any]:
        return self._get_json("/_bench/stats")

    def wait(self, timeout: float) -> Dict[str, Any]:
        """The counters once the reset's target is reached, or after ``timeout`` seconds."""
        return self._get_json(f"/_bench/wait?timeout={timeout}", timeout=timeout + 30)

    def settle(self, quiet: float = 0.5, limit: float = 60.0) -> Dict[str, Any]:
        """The counters once the target is reached or the count stopped moving for ``quiet`` seconds."""
        deadline = time.monotonic() + limit
        previous = -1
        while True:
            stats = self.wait(quiet)
            if stats["reached_at"] is not None or stats["messages"] == previous or time.monotonic() > deadline:
                return stats
            previous = stats["messages"]

    def largest_request(self) -> bytes:
        """The raw request that carried the most messages since the reset."""
        return self._get("/_bench/largest")


def batch_request(port: int, body: bytes, path: str = "/analytics/v1/batch") -> bytes:
    """A raw HTTP/1.1 keep-alive POST carrying ``body``."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nAuthorization: Basic bench-key\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def our_batch_body(count: int = 100) -> bytes:
    """``count`` track messages shaped as analytics_vitally sends them, as one JSON array."""
    messages = [
        json.dumps(
            {
                "type": "track",
                "userId": f"user-{index % 1000}",
                "event": "Benchmark Event",
                "properties": {"plan": "pro", "index": index, "amount": 12.5},
                "messageId": f"00000000-0000-4000-8000-{index:012d}",
                "timestamp": "2024-01-01T00:00:00.000Z",
            },
            separators=(",", ":"),
        )
        for index in range(count)
    ]
    return ("[" + ",".join(messages) + "]").encode()


@dataclass
class CeilingResult:
    messages_per_second: float
    requests: int
    messages: int
    seconds: float
    receiver_cpu: float
    """The receiver's CPU seconds per wall second during the loop (1.0 = one core busy)."""


def post_loop(control: ReceiverControl, request: bytes, seconds: float, depth: int = 1) -> CeilingResult:
    """Post ``request`` over one keep-alive connection for ``seconds``, ``depth`` requests in flight.

    What counts is what the receiver counted, not what was sent.
    """
    control.reset()
    answer_size = len(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"status":1}')
    sock = socket.create_connection((LOOPBACK, control.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        started = time.monotonic()
        deadline = started + seconds
        sent = answered = received = 0
        while sent < depth:
            sock.sendall(request)
            sent += 1
        while answered < sent:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("the receiver closed the connection during the ceiling loop")
            received += len(chunk)
            now_answered = received // answer_size
            for _ in range(now_answered - answered):
                if time.monotonic() < deadline:
                    sock.sendall(request)
                    sent += 1
            answered = now_answered
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    stats = control.stats()
    if stats["errors"]:
        raise RuntimeError(f"the receiver refused {stats['errors']} request(s) of the ceiling loop")
    return CeilingResult(
        messages_per_second=stats["messages"] / elapsed,
        requests=stats["requests"],
        messages=stats["messages"],
        seconds=elapsed,
        receiver_cpu=stats["cpu_seconds"] / max(stats["wall_seconds"], 1e-9),
    )


def memory_kib() -> Dict[str, int]:
    """This process's current and peak resident set size in KiB (VmRSS, VmHWM from /proc)."""
    values: Dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


def cpu_jiffies() -> Tuple[int, int]:
    """(busy, total) jiffies of all CPUs together since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


LIBRARY = BENCH_DIR.parent / "analytics_vitally"


def library_fingerprint(package: Optional[Path] = None) -> str:
    """A short hash of the analytics_vitally source in ``package`` (default: the one this process would import)."""
    if package is None:
        spec = importlib.util.find_spec("analytics_vitally")
        package = Path(spec.origin).parent if spec is not None and spec.origin else LIBRARY
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


def snapshot_library(into: Path) -> Path:
    """Copy analytics_vitally's source into ``into``; put ``into`` on PYTHONPATH to measure that copy.

    The library may be edited while a benchmark runs: every run of one benchmark measures the same code.
    """
    target = into / "analytics_vitally"
    shutil.copytree(LIBRARY, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def machine_busy(seconds: float) -> float:
    """How many CPUs were busy, on average, over the next ``seconds`` (all processes)."""
    busy_before, total_before = cpu_jiffies()
    time.sleep(seconds)
    busy_after, total_after = cpu_jiffies()
    return (busy_after - busy_before) / max(total_after - total_before, 1) * (os.cpu_count() or 1)


def allow_loopback_only() -> None:
    """Make any attempt to reach a host other than 127.0.0.1 fail loudly in this process."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in _LOOPBACK_NAMES:
            raise OSError(f"benchmark: refusing to resolve {name!r}: only 127.0.0.1 may be contacted")
        return real_getaddrinfo(host, *args, **kwargs)

    def check(address: Any) -> None:
        if isinstance(address, tuple) and address and address[0] not in _LOOPBACK_NAMES:
            raise OSError(f"benchmark: refusing to connect to {address!r}: only 127.0.0.1 may be contacted")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect  # type: ignore[method-assign, assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign, assignment]


def environment(library: Optional[Path] = None) -> Dict[str, str]:
    """A subprocess environment without proxies (the clients must hit 127.0.0.1 directly).

    With ``library`` (a directory holding an analytics_vitally copy), that copy is the one imported.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if "proxy" not in key.lower() and not key.startswith(("POSTHOG_", "VITALLY_"))
    }
    env["NO_PROXY"] = "*"
    if library is not None:
        env["PYTHONPATH"] = str(library)
    return env
