"""Profile analytics_vitally's hot path: Client.track on the app thread while the worker delivers.

    python bench/profile_ours.py                 # cProfile of the app thread and of the worker thread
    python bench/profile_ours.py --breakdown     # what each step of one track() costs, in isolation
    python bench/profile_ours.py --plain         # just the workload (to run under py-spy or pyinstrument)

    py-spy record --threads --format raw -o /tmp/ours.txt -- python bench/profile_ours.py --plain
    py-spy record --threads --gil --format raw -o /tmp/ours-gil.txt -- python bench/profile_ours.py --plain

The workload is bench/run.py's: 20,000 calls back to back against bench/receiver.py
in its own process, default settings except max_queue_size (so nothing is dropped).
It reaches into the client's private worker only to run a profiler on its thread.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import sys
import time
import timeit
from typing import Any, Callable, Dict, List, Optional

from clients import EVENT, WRITE_KEY
from rig import LOOPBACK, ReceiverControl, allow_loopback_only, batch_request, start_receiver


def workload(
    port: int, calls: int, settings: Dict[str, Any], on_worker: Optional[Callable[[Callable[[], None]], None]] = None
) -> Dict[str, float]:
    """Make ``calls`` track calls and wait until the receiver counted them all; timings in seconds."""
    from analytics_vitally import Client

    control = ReceiverControl(port)
    client = Client(WRITE_KEY, host=f"http://{LOOPBACK}:{port}", **settings)
    worker: Any = client._worker
    run = worker._run
    worker_cpu: List[float] = []

    def measured_run() -> None:
        started = time.thread_time()
        try:
            if on_worker is None:
                run()
            else:
                on_worker(run)
        finally:
            worker_cpu.append(time.thread_time() - started)

    worker._run = measured_run  # the threads start at the first put, with this as their target
    control.reset(target=calls)
    track = client.track
    started = time.monotonic()
    thread_started = time.thread_time()
    for i in range(calls):
        track(f"user-{i % 1000}", EVENT, {"plan": "pro", "index": i, "amount": 12.5})
    app_cpu = time.thread_time() - thread_started
    calls_done = time.monotonic()
    during_calls = control.stats()
    client.flush(300)
    received = control.wait(300)
    client.shutdown(10)
    return {
        "calls_s": calls_done - started,
        "app_cpu_s": app_cpu,
        "delivered_during_calls": during_calls["messages"],
        "requests_during_calls": during_calls["requests"],
        "total_s": (received["reached_at"] or received["last_at"]) - started,
        "delivered": received["messages"],
        "requests": received["requests"],
        "worker_cpu_s": sum(worker_cpu),
    }


def profile(port: int, calls: int, settings: Dict[str, Any], top: int) -> None:
    worker_profiles: List[cProfile.Profile] = []

    def on_worker(run: Callable[[], None]) -> None:
        profiler = cProfile.Profile()
        worker_profiles.append(profiler)
        profiler.enable()
        try:
            run()
        finally:
            profiler.disable()

    app = cProfile.Profile()
    app.enable()
    timings = workload(port, calls, settings, on_worker)
    app.disable()
    print(f"profiled run ({calls:,} calls): {_timings(timings, calls)}")
    print(
        f"worker thread CPU (profiled): {timings['worker_cpu_s']:.3f}s for {timings['requests']:.0f} requests "
        f"({timings['worker_cpu_s'] / max(timings['requests'], 1) * 1e3:.2f} ms per batch)"
    )
    for title, profiler in [
        ("APP THREAD", app),
        *[(f"WORKER THREAD {n + 1}", p) for n, p in enumerate(worker_profiles)],
    ]:
        for sort in ("tottime", "cumulative"):
            stream = io.StringIO()
            stats = pstats.Stats(profiler, stream=stream)
            stats.sort_stats(sort).print_stats(top)
            print(f"\n===== {title}, by {sort} =====")
            print(_trim(stream.getvalue()))


def breakdown(calls: int, port: int) -> None:
    """Each step of Client.track, and of delivering one batch, timed alone on an otherwise idle process."""
    import http.client
    import socket
    from uuid import uuid4

    import requests
    import urllib3

    import analytics_vitally
    from analytics_vitally import Client
    from analytics_vitally import client as client_module
    from analytics_vitally.delivery import Outcome
    from analytics_vitally.encoding import encode, now_timestamp
    from analytics_vitally.messages import check, normalize_ids, parameter
    from analytics_vitally.settings import Settings
    from analytics_vitally.transport import Transport
    from analytics_vitally.worker import Worker

    new_id: Callable[[], str] = getattr(client_module, "_new_message_id", lambda: str(uuid4()))
    fields = {
        "type": "track",
        "userId": "user-1",
        "accountId": None,
        "organizationId": None,
        "event": EVENT,
        "properties": {"plan": "pro", "index": 1, "amount": 12.5},
    }
    message = {key: value for key, value in fields.items() if value is not None}
    message["messageId"] = new_id()
    message["timestamp"] = now_timestamp()
    quiet = Client(WRITE_KEY, host=f"http://{LOOPBACK}:{port}", send=False)
    hooked = Client(WRITE_KEY, host=f"http://{LOOPBACK}:{port}", send=False, before_send=lambda message: message)
    inside = analytics_vitally.context(account_id="acct-1", properties={"tenant": "t-1"})
    steps: Dict[str, Callable[[], Any]] = {
        "track() whole, send=False (no queue, no worker)": lambda: quiet.track(
            "user-1", EVENT, {"plan": "pro", "index": 1, "amount": 12.5}
        ),
        "  the same with before_send (returns the message)": lambda: hooked.track(
            "user-1", EVENT, {"plan": "pro", "index": 1, "amount": 12.5}
        ),
        "  the same inside a context (account, one property)": lambda: quiet.track(
            "user-1", EVENT, {"plan": "pro", "index": 1, "amount": 12.5}
        ),
        "  drop None values (dict comprehension)": lambda: {k: v for k, v in fields.items() if v is not None},
        f"  message ID ({getattr(new_id, '__name__', '?')})": new_id,
        "  now_timestamp()": now_timestamp,
        "  normalize_ids()": lambda: normalize_ids(message),
        "  check() (the problems generator)": lambda: check(message, parameter),
        "  encode()": lambda: encode(message, parameter),
    }
    number = max(calls, 10_000)
    print(f"app thread: each step of one track() alone, best of 5 x {number:,}, µs per call:")
    for label, step in steps.items():
        with inside if "inside a context" in label else contextlib.nullcontext():  # entered once, not per call
            best = min(timeit.repeat(step, number=number, repeat=5)) / number * 1e6
        print(f"  {label:56} {best:6.2f}")

    # The queue: Worker.put with a worker whose delivery costs nothing (so only the queue and its lock cost).
    class FreeDelivery:
        def deliver(self, batch: List[str]) -> Outcome:
            return Outcome(sent=len(batch), batches=1)

        def get_ready(self) -> None: ...

        def release(self) -> None: ...

        def abort(self) -> None: ...

        def retire(self) -> bool:
            return False

    worker = Worker(FreeDelivery(), Settings(max_queue_size=10**7))
    item = encode(message, parameter)
    put = worker.put
    started = time.perf_counter()
    for _ in range(number):
        put(item)
    elapsed = time.perf_counter() - started
    worker.flush(10)
    print(f"  {'Worker.put (its worker running, delivery free)':56} {elapsed / number * 1e6:6.2f}")

    control = ReceiverControl(port)
    items = [encode({**message, "properties": {"plan": "pro", "index": i, "amount": 12.5}}) for i in range(100)]
    body = ("[" + ",".join(items) + "]").encode()
    url = f"http://{LOOPBACK}:{port}/analytics/v1/batch"
    headers = {"Authorization": f"Basic {WRITE_KEY}", "Content-Type": "application/json"}
    session = requests.Session()
    session.headers.update(headers)
    pool = urllib3.HTTPConnectionPool(LOOPBACK, port, maxsize=1)
    transport = Transport(Settings(write_key=WRITE_KEY, host=f"http://{LOOPBACK}:{port}").resolved())
    connection = http.client.HTTPConnection(LOOPBACK, port)
    raw = socket.create_connection((LOOPBACK, port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = batch_request(port, body)

    def post_raw() -> None:
        raw.sendall(request)
        raw.recv(4096)

    def post_urllib3() -> None:
        response = pool.urlopen("POST", "/analytics/v1/batch", body=body, headers=headers, preload_content=False)
        response.read(4097)
        response.release_conn()

    def post_http_client() -> None:
        connection.request("POST", "/analytics/v1/batch", body, headers)
        connection.getresponse().read()

    batch_steps: Dict[str, Callable[[], Any]] = {
        "join 100 encoded messages + .encode()": lambda: ("[" + ",".join(items) + "]").encode(),
        "Transport.deliver (the worker's whole path)": lambda: transport.deliver(items),
        "requests.Session.post": lambda: session.post(url, data=body, timeout=10),
        "urllib3 pool.urlopen (how the transport posted before)": post_urllib3,
        "http.client request + getresponse().read()": post_http_client,
        "raw socket sendall + recv": post_raw,
    }
    print(f"worker: one batch of 100 ({len(body):,} bytes) to the receiver, no other thread running:")
    print(f"  {'':64} {'CPU µs':>8} {'wall µs':>8}")
    for label, step in batch_steps.items():
        for _ in range(50):
            step()
        control.reset()
        rounds = 1000
        cpu_started, wall_started = time.thread_time(), time.perf_counter()
        for _ in range(rounds):
            step()
        cpu = (time.thread_time() - cpu_started) / rounds * 1e6
        wall = (time.perf_counter() - wall_started) / rounds * 1e6
        print(f"  {label:64} {cpu:8.1f} {wall:8.1f}")
    raw.close()
    connection.close()
    session.close()
    pool.close()


def _timings(timings: Dict[str, float], calls: int) -> str:
    return (
        f"{timings['calls_s'] / calls * 1e6:.2f} µs/call wall, "
        f"{timings['app_cpu_s'] / calls * 1e6:.2f} µs/call app CPU; "
        f"{timings['delivered_during_calls']:.0f} messages in {timings['requests_during_calls']:.0f} requests "
        f"delivered while the calls ran; all {timings['delivered']:.0f} after {timings['total_s']:.3f}s "
        f"({timings['delivered'] / timings['total_s']:,.0f} msg/s, {timings['requests']:.0f} requests); "
        f"worker CPU {timings['worker_cpu_s'] / max(timings['requests'], 1) * 1e6:,.0f} µs per batch, "
        f"{timings['worker_cpu_s'] / calls * 1e6:.2f} µs per message"
    )


def _trim(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    start = next((n for n, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(lines[max(0, start - 1) :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plain", action="store_true", help="run the workload only, with timings")
    mode.add_argument("--breakdown", action="store_true", help="time each step of track() alone")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=25, help="functions to list per profile")
    parser.add_argument("--thread", type=int, default=1)
    parser.add_argument("--switch-interval", type=float, help="sys.setswitchinterval (default 0.005 s)")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    allow_loopback_only()
    receiver, port = start_receiver()
    settings = {"max_queue_size": max(args.calls, 10_000), "thread": args.thread}
    try:
        if args.breakdown:
            breakdown(args.calls, port)
        elif args.plain:
            timings = workload(port, args.calls, settings)
            print(_timings(timings, args.calls))
        else:
            profile(port, args.calls, settings, args.top)
    finally:
        receiver.terminate()
        receiver.wait(10)


if __name__ == "__main__":
    main()
