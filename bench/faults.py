"""Measure delivery under injected faults: delivered / sent, duplicates, longest wait, peak memory.

    python bench/faults.py

Each scenario sends 1,000 track messages through a Client to a local server that misbehaves in
one way, then reports what arrived. The first rows use the library's Receiver (answers Vitally
could give); the hostile rows use tests/hostile.py, a raw-socket server that breaks HTTP itself.
"peak RSS MB" is how far this process's peak resident memory rose above its size at the start of
the row. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests/hostile.py

from analytics_vitally import Client
from analytics_vitally.testing import Receiver, Reply, Request
from tests.hostile import (
    Answer,
    HostileServer,
    continue_flood,
    endless_chunked,
    first,
    huge_body,
    reply,
    trickle_headers,
    truncated,
)

COUNT = 1_000
Respond = Callable[[Request], Optional[Reply]]
Server = Tuple[str, Callable[[], List[str]], Callable[[], List[float]]]
"""(its URL, the message IDs it accepted, the arrival time of each request)"""


def first_replies(n: int, make: Callable[[], Reply], before: Callable[[], object] = lambda: None) -> Respond:
    seen = [0]
    lock = threading.Lock()

    def respond(request: Request) -> Optional[Reply]:
        with lock:
            seen[0] += 1
            hit = seen[0] <= n
        if hit:
            before()
            return make()
        return None

    return respond


def reject_marked(request: Request) -> Optional[Reply]:
    if any(m.get("properties", {}).get("bad") for m in request.messages or []):
        return Reply(400, {"message": "Bad Request"})
    return None


@contextlib.contextmanager
def receiver(respond: Optional[Respond]) -> Iterator[Server]:
    arrivals: List[float] = []

    def timed(request: Request) -> Optional[Reply]:
        arrivals.append(time.monotonic())
        return respond(request) if respond is not None else None

    with Receiver() as running:
        running.respond = timed
        yield running.url, running.message_ids, lambda: arrivals


@contextlib.contextmanager
def hostile(answer: Answer) -> Iterator[Server]:
    with HostileServer(answer, lifetime=600) as running:
        yield running.url, running.message_ids, lambda: [request.arrived for request in running.requests]


def memory_kib(name: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(name + ":"))


def reset_peak_memory() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM := VmRSS (Linux)


def run(
    name: str,
    server: contextlib.AbstractContextManager[Server],
    flush_timeout: Optional[float] = None,
    pause: Optional[float] = None,
    **settings: Any,
) -> Dict[str, Any]:
    """One scenario; ``pause``: the Retry-After the first request gets, to count requests during it."""
    errors: List[int] = []
    with server as (url, message_ids, arrivals):
        client = Client(
            "test-token" if name != "401 bad write_key" else "wrong",
            host=settings.pop("host", url),
            on_error=lambda error, messages: errors.append(len(messages)),
            **settings,
        )
        rss = memory_kib("VmRSS")
        reset_peak_memory()
        started = time.monotonic()
        for i in range(COUNT):
            client.track("u", "e", {"i": i, "bad": name.startswith("400") and i == 500})
        calls = time.monotonic() - started
        flushed = client.flush(timeout=flush_timeout)
        waited = time.monotonic() - started
        peak = memory_kib("VmHWM") - rss
        ids = message_ids()
        times = arrivals()
        client.shutdown(timeout=1)
        if pause is not None and times:
            during: Any = sum(1 for arrived in times[1:] if arrived < times[0] + pause)
        else:
            during = "-"
        return {
            "scenario": name,
            "delivered": len(set(ids)),
            "duplicates": len(ids) - len(set(ids)),
            "failed": sum(errors),
            "requests": len(times),
            "flush": flushed,
            "calls s": round(calls, 3),
            "longest wait s": round(waited, 2),
            "peak RSS MB": round(max(peak, 0) / 1024, 1),
            "requests in Retry-After": during,
        }


def main() -> None:
    fast = {"retry_wait": 0.05}
    with Receiver() as gone:
        down = gone.url
    release = threading.Event()
    limited = first_replies(2, lambda: Reply(429, headers={"Retry-After": "1"}))
    stuck = first_replies(10**6, lambda: Reply(503), lambda: release.wait(30))
    rows = [
        run("no fault", receiver(None)),
        run("503 x5", receiver(first_replies(5, lambda: Reply(503))), **fast),
        run("429 Retry-After: 1 x2", receiver(limited), **fast),
        run("connection reset x3", receiver(first_replies(3, lambda: Reply(reset=True))), **fast),
        run(
            "slower than timeout x2",
            receiver(first_replies(2, lambda: Reply(503), lambda: time.sleep(1.0))),
            timeout=0.3,
            **fast,
        ),
        run("400 for 1 marked of 1000", receiver(reject_marked), **fast),
        run("401 bad write_key", receiver(None), **fast),
        run("never answers, flush(2)", receiver(stuck), 2.0, **fast),
        run("server down, flush(2)", receiver(None), 2.0, host=down, **fast),
        run("500, endless chunked body x3", hostile(first(3, endless_chunked(500))), **fast),
        run("500, 300 MB body x3", hostile(first(3, huge_body(300 << 20))), **fast),
        run("503 cut short (5 of 100 bytes) x3", hostile(first(3, truncated(503))), **fast),
        run("headers trickled, a byte per 0.2 s x2, timeout=1", hostile(first(2, trickle_headers)), timeout=1, **fast),
        run("100 Continue for ever x2, timeout=1", hostile(first(2, continue_flood)), timeout=1, **fast),
        run(
            "429 Retry-After: 2, thread=4, upload_size=10",
            hostile(first(1, reply(429, b"{}", {"Retry-After": "2"}))),
            pause=2.0,
            thread=4,
            upload_size=10,
            **fast,
        ),
    ]
    release.set()
    columns = list(rows[0])
    print(" | ".join(columns))
    print(" | ".join("---" for _ in columns))
    for row in rows:
        print(" | ".join(str(row[column]) for column in columns))


if __name__ == "__main__":
    main()
