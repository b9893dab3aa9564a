"""One measurement of one client in a fresh process; run by bench/run.py, prints one RESULT line.

    python bench/measure.py --client ours --port 8123 --calls 20000 --delay 0.05 --set thread=4

The client is built (importing its package), the receiver is reset with
``target=calls``, then the calls run back to back on this (the app) thread while
the client's own threads deliver, then ``flush()``, then the receiver is asked
when it counted the last message. Peak RSS is this process's VmHWM.

With a client's default queue (no ``max_queue_size`` set) and an answering
receiver, a client may drop calls and the receiver never reaches the target: then
the count is taken once it stays put for ``SETTLE_QUIET`` seconds after
``flush()`` (every client's flush waits for its queue to be delivered, so it is
final by then), and at most ``SETTLE_LIMIT`` seconds after it.

With ``--set spool="DIR"`` (ours + spool; run.py makes DIR and removes it) the
result also says what the spool directory held once the count settled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, Tuple

from clients import CLIENTS, FACES, build
from rig import LOOPBACK, ReceiverControl, allow_loopback_only, cpu_jiffies, library_fingerprint, memory_kib

SETTLE_QUIET = 1.0
"""Seconds without a new message at the receiver, after flush(), before a count short of the target is final."""
SETTLE_LIMIT = 120.0
"""At most this many seconds after flush() are spent waiting for the count to settle."""
TARGET_TIMEOUT = 300.0
"""Seconds to wait, after flush(), for the target when the settings let no client drop."""


def settle(
    control: ReceiverControl, quiet: float = SETTLE_QUIET, limit: float = SETTLE_LIMIT
) -> Tuple[Dict[str, Any], bool]:
    """The receiver's counters once the target is reached or the count stayed put for ``quiet`` seconds.

    Returns (counters, settled); settled is False if the count was still moving after ``limit`` seconds.
    """
    deadline = time.monotonic() + limit
    stats = control.stats()
    while stats["reached_at"] is None and time.monotonic() + quiet <= deadline:
        later = control.wait(quiet)  # answered at once if the target is reached meanwhile
        if later["reached_at"] is None and later["messages"] == stats["messages"]:
            return later, True
        stats = later
    return stats, stats["reached_at"] is not None


def measure(
    client: str, port: int, calls: int, delay: float, settings: Dict[str, Any], otel: bool = False
) -> Dict[str, Any]:
    allow_loopback_only()
    control = ReceiverControl(port)
    before_import = memory_kib()
    library = library_fingerprint()
    if otel:  # ours with OpenTelemetry metrics instrumented (an SDK provider and an in-memory reader)
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        import analytics_vitally

        analytics_vitally.instrument_metrics(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    bench = build(client, f"http://{LOOPBACK}:{port}", settings)
    built = memory_kib()
    control.reset(delay=delay, target=calls)
    track = bench.track

    jiffies_started = cpu_jiffies()
    cpu_started = time.process_time()
    started = time.monotonic()
    thread_started = time.thread_time()
    for i in range(calls):
        track(i)
    thread_cpu = time.thread_time() - thread_started
    calls_done = time.monotonic()

    bench.flush()
    flushed = time.monotonic()
    # With the default queue a client may drop messages and never reach the target: wait for the count to settle.
    may_drop = delay == 0 and settings.get("max_queue_size") is None
    if may_drop:
        received, settled = settle(control)
    else:
        received = control.wait(timeout=TARGET_TIMEOUT)
        settled = received["reached_at"] is not None
    settle_s = time.monotonic() - flushed
    process_cpu = time.process_time() - cpu_started
    jiffies_ended = cpu_jiffies()
    window = time.monotonic() - started
    busy, total = (end - start for end, start in zip(jiffies_ended, jiffies_started))
    cpus = os.cpu_count() or 1
    machine_cpu = busy / max(total, 1) * cpus * window
    other_cpu = max(0.0, machine_cpu - process_cpu - received["cpu_seconds"])
    reached_at = received["reached_at"]
    end = reached_at if reached_at is not None else received["last_at"] or flushed
    delivered = received["messages"]
    spool = settings.get("spool")
    spool_files, spool_bytes = spool_size(spool) if spool else (None, None)
    return {
        "client": client,
        "version": bench.version,
        "library": library,
        "calls": calls,
        "delay": delay,
        "settings": settings,
        "call_us": (calls_done - started) / calls * 1e6,
        "call_cpu_us": thread_cpu / calls * 1e6,
        "flush_s": flushed - calls_done,
        "settle_s": settle_s,
        "settled": settled,
        "delivered": delivered,
        "delivered_fraction": delivered / calls,
        "complete": reached_at is not None,
        "seconds": end - started,
        "messages_per_second": delivered / (end - started),
        "process_cpu_s": process_cpu,
        "process_cpu_us_per_message": process_cpu / calls * 1e6,
        "process_cpu_us_per_delivered": process_cpu / delivered * 1e6 if delivered else None,
        "dropped_by_client": bench.dropped(),
        "requests": received["requests"],
        "receiver_errors": received["errors"],
        "paths": received["paths"],
        "connections": received["connections"],
        "receiver_cpu": received["cpu_seconds"] / max(received["wall_seconds"], 1e-9),
        "other_load": other_cpu / window,
        "rss_before_import_kib": before_import["VmRSS"],
        "rss_built_kib": built["VmRSS"],
        "peak_rss_kib": memory_kib()["VmHWM"],
        "spool_files": spool_files,
        "spool_bytes": spool_bytes,
    }


def spool_size(directory: str) -> Tuple[int, int]:
    """The files in a spool directory and their apparent size in bytes (what max_spool_bytes counts)."""
    files = size = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                files += 1
                size += entry.stat(follow_symlinks=False).st_size
    return files, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=CLIENTS + FACES, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds the receiver waits before each answer")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=JSON", help="a client setting")
    parser.add_argument("--otel", action="store_true", help="ours: instrument OpenTelemetry metrics first")
    args = parser.parse_args()
    settings = {name: json.loads(value) for name, _, value in (item.partition("=") for item in args.set)}
    result = measure(args.client, args.port, args.calls, args.delay, settings, args.otel)
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    # Skip the clients' atexit handlers: everything was delivered and measured already.
    os._exit(0)


if __name__ == "__main__":
    main()
