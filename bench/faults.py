"""Measure delivery under injected faults: delivered / sent, duplicates, longest wait.

    python bench/faults.py

Each scenario sends 1,000 track messages through a Client to a local Receiver that
misbehaves in one way, then reports what arrived. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional

from analytics_vitally import Client
from analytics_vitally.testing import Receiver, Reply, Request

COUNT = 1_000
Respond = Callable[[Request], Optional[Reply]]


def first(n: int, make: Callable[[], Reply], before: Callable[[], None] = lambda: None) -> Respond:
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


def run(
    name: str, respond: Optional[Respond], flush_timeout: Optional[float] = None, **settings: Any
) -> Dict[str, Any]:
    errors: List[int] = []
    with Receiver() as receiver:
        receiver.respond = respond
        client = Client(
            "test-token" if name != "401 bad write_key" else "wrong",
            host=settings.pop("host", receiver.url),
            on_error=lambda error, messages: errors.append(len(messages)),
            **settings,
        )
        started = time.monotonic()
        for i in range(COUNT):
            client.track("u", "e", {"i": i, "bad": name.startswith("400") and i == 500})
        calls = time.monotonic() - started
        flushed = client.flush(timeout=flush_timeout)
        waited = time.monotonic() - started
        ids = receiver.message_ids()
        client.shutdown(timeout=1)
        return {
            "scenario": name,
            "delivered": len(set(ids)),
            "duplicates": len(ids) - len(set(ids)),
            "failed": sum(errors),
            "requests": len(receiver.requests),
            "flush": flushed,
            "calls s": round(calls, 3),
            "longest wait s": round(waited, 2),
        }


def main() -> None:
    fast = {"retry_wait": 0.05}
    with Receiver() as gone:
        down = gone.url
    release = threading.Event()
    rows = [
        run("no fault", None),
        run("503 x5", first(5, lambda: Reply(503)), **fast),
        run("429 Retry-After: 1 x2", first(2, lambda: Reply(429, headers={"Retry-After": "1"})), **fast),
        run("connection reset x3", first(3, lambda: Reply(reset=True)), **fast),
        run("slower than timeout x2", first(2, lambda: Reply(503), lambda: time.sleep(1.0)), timeout=0.3, **fast),
        run("400 for 1 marked of 1000", reject_marked, **fast),
        run("401 bad write_key", None, **fast),
        run("never answers, flush(2)", first(10**6, lambda: Reply(503), lambda: release.wait(30)), 2.0, **fast),
        run("server down, flush(2)", None, 2.0, host=down, **fast),
    ]
    release.set()
    columns = list(rows[0])
    print(" | ".join(columns))
    print(" | ".join("---" for _ in columns))
    for row in rows:
        print(" | ".join(str(row[column]) for column in columns))


if __name__ == "__main__":
    main()
