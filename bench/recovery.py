"""Measure how soon delivery resumes after an outage: N outages while a thread tracks steadily.

    python bench/recovery.py                 # 10 outages of 10 s at 1,000 calls/s: about 3 minutes
    python bench/recovery.py -n 3 --outage 3 --kind reset
    python bench/recovery.py --spool --max-retry-time 3   # batches give up in each outage: read back from disk

A Receiver on 127.0.0.1 goes away for ``--outage`` seconds, ``-n`` times, while one thread makes
``--rate`` track calls a second through a Client with its default settings. ``refused`` (the
default): the server process is gone, its connections reset and new ones refused, then a new one
listens on the same port; ``reset``: the server accepts each connection, reads the request and
resets it unanswered. For each outage it prints the recovery (seconds from the server's return to
its first accepted batch) and the catch-up (until the queue is back under one batch); then the
worst and the median recovery, the longest wait between two requests, the calls refused (queue
full), and whether every accepted call arrived exactly once. ``--spool`` gives the client a spool in
a temporary directory; with ``--max-retry-time`` shorter than the outage, batches give up during it
and go back to the spool, so the recovery is the spool's read-back. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's analytics_vitally

from analytics_vitally import Client
from analytics_vitally.delivery import request_observers
from analytics_vitally.testing import Receiver, Reply, Request

TOKEN = "bench-token"


def reset(request: Request) -> Optional[Reply]:
    return Reply(reset=True)


class Server:
    """A Receiver that goes away (``down``) and comes back (``up``) on the same port."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.receivers = [Receiver(token=TOKEN).start()]
        self.port = self.receivers[0].port

    @property
    def receiver(self) -> Receiver:
        return self.receivers[-1]

    def down(self) -> None:
        self.receiver.respond = reset  # connections it kept alive die with it
        if self.kind == "refused":
            self.receiver.stop()

    def up(self) -> None:
        if self.kind == "reset":
            self.receiver.respond = None
            return
        deadline = time.monotonic() + 5
        while True:
            try:
                self.receivers.append(Receiver(token=TOKEN, port=self.port).start())
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def message_ids(self) -> List[str]:
        return [message_id for receiver in self.receivers for message_id in receiver.message_ids()]


class Tracker:
    def __init__(self, client: Client, rate: float) -> None:
        self.client = client
        self.rate = rate
        self.accepted: List[str] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        made = 0
        while not self._stop.is_set():
            ahead = started + made / self.rate - time.monotonic()
            if ahead > 0.005:
                self._stop.wait(ahead)
                continue
            queued, message = self.client.track("u", "e", {"i": made})
            if queued:
                self.accepted.append(message["messageId"])
            else:
                self.refused += 1
            made += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10, help="outages (default 10)")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds each outage lasts (default 10)")
    parser.add_argument("--up", type=float, default=5.0, help="seconds up between outages, at least (default 5)")
    parser.add_argument("--rate", type=float, default=1000.0, help="calls a second (default 1000)")
    parser.add_argument("--kind", choices=["refused", "reset"], default="refused")
    parser.add_argument("--spool", action="store_true", help="the client with a spool (a temporary directory)")
    parser.add_argument("--max-retry-time", type=float, default=60.0, help="the client's (default 60)")
    options = parser.parse_args()
    spool = tempfile.mkdtemp(prefix="recovery-spool-") if options.spool else None

    requests: List[Tuple[float, float]] = []  # (start, end) of every request

    def observe(url: str, duration: float, status: Optional[int], failure: Optional[str]) -> None:
        ended = time.monotonic()
        requests.append((ended - duration, ended))

    request_observers.append(observe)
    server = Server(options.kind)
    errors: List[Exception] = []
    client = Client(
        TOKEN,
        host=f"http://127.0.0.1:{server.port}",
        on_error=lambda error, _: errors.append(error),
        spool=spool,
        max_retry_time=options.max_retry_time,
    )
    tracker = Tracker(client, options.rate)
    recoveries: List[float] = []
    time.sleep(options.up)
    shape = f"{options.kind}{', spool' if spool else ''}, max_retry_time={options.max_retry_time:g}"
    print(f"{options.n} outages of {options.outage:g} s ({shape}) at {options.rate:g} calls/s", flush=True)
    for number in range(1, options.n + 1):
        server.down()
        time.sleep(options.outage)
        server.up()
        returned = time.monotonic()
        receiver = server.receiver
        if receiver.wait_for(len(receiver.messages) + 1, timeout=120):
            recoveries.append(time.monotonic() - returned)
            shown = f"{recoveries[-1]:6.3f} s"
        else:
            recoveries.append(float("inf"))
            shown = "  none within 120 s"
        while client.stats().queue_depth > 100 and time.monotonic() - returned < 60:
            time.sleep(0.01)
        caught_up = time.monotonic() - returned
        print(f"outage {number:2}: recovery {shown}, queue caught up after {caught_up:.2f} s", flush=True)
        time.sleep(max(0.0, returned + options.up - time.monotonic()))
    tracker.stop()
    flushed = client.flush(timeout=60)
    if spool:  # batches that went back to the spool are not in the queue flush() waits for
        deadline = time.monotonic() + 60
        while not set(tracker.accepted) <= set(server.message_ids()) and time.monotonic() < deadline:
            time.sleep(0.1)
    client.shutdown(timeout=5)
    server.receiver.stop()
    request_observers.remove(observe)

    delivered = Counter(server.message_ids())
    idle = max((start - end for (_, end), (start, _) in zip(requests, requests[1:])), default=0.0)
    made = len(tracker.accepted) + tracker.refused
    print(f"recovery: worst {max(recoveries):.3f} s, median {statistics.median(recoveries):.3f} s")
    print(f"longest wait between two requests: {idle:.3f} s")
    print(f"calls: {made}, refused (queue full): {tracker.refused} ({100 * tracker.refused / max(1, made):.2f} %)")
    print(
        f"accepted calls delivered: {len(set(delivered) & set(tracker.accepted))} of {len(tracker.accepted)}, "
        f"twice or more: {sum(1 for count in delivered.values() if count > 1)}, flushed: {flushed}, "
        f"reported to on_error: {len(errors)}"
    )


if __name__ == "__main__":
    main()
