"""Real process lifecycles: multiprocessing children, signal handlers, the exit drain with Vitally
down, calls made after it. Each runs in a fresh interpreter against a server on 127.0.0.1."""

from __future__ import annotations

import gc
import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from typing import Any, Dict, Iterator, List

import pytest

from analytics_vitally import Client
from analytics_vitally.testing import Receiver, Reply

from .conftest import TOKEN, MakeClient, run_script
from .hostile import HostileServer, ok


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that takes connections (in the kernel's backlog) and never answers."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def closed_port() -> int:
    probe = socket.create_server(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
@pytest.mark.parametrize("how", ["process", "pool"])
def test_multiprocessing_children_deliver_without_flush(receiver: Receiver, how: str) -> None:
    # Children started with fork leave through os._exit: no atexit, only multiprocessing's finalizers.
    done = run_script(
        f"""
        import multiprocessing
        from analytics_vitally import Client

        client = Client({TOKEN!r}, host={receiver.url!r}, upload_interval=60)

        def work(n):
            for i in range(150):
                client.track("u", "e", {{"child": n, "i": i}})
            return n

        if __name__ == "__main__":
            context = multiprocessing.get_context("fork")
            if {how!r} == "process":
                children = [context.Process(target=work, args=(n,)) for n in range(4)]
                for child in children:
                    child.start()
                for child in children:
                    child.join()
            else:
                pool = context.Pool(4)
                pool.map(work, range(4), chunksize=1)
                pool.close()
                pool.join()
        """
    )
    assert done.returncode == 0, done.stderr
    assert receiver.wait_for(600, timeout=10)
    ids = receiver.message_ids()
    assert (len(ids), len(set(ids))) == (600, 600)


SIGNAL_SCRIPT = """
    import signal, sys, time
    from analytics_vitally import Client

    client = Client({token!r}, host={url!r}, upload_interval=0.01)
    results = []

    def handler(signum, frame):
        results.append(client.flush(timeout=1))

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)  # lands inside track(), stats(), flush()
    started, calls = time.monotonic(), 0
    while time.monotonic() - started < 1.0:
        client.track("u", "e", {{"i": calls}})
        client.stats()
        calls += 1
    signal.setitimer(signal.ITIMER_REAL, 0)
    print(calls, len(results), client.flush(timeout=10), flush=True)
"""


def test_flush_from_a_signal_handler_never_deadlocks_or_nests(receiver: Receiver) -> None:
    started = time.monotonic()
    done = run_script(SIGNAL_SCRIPT.format(token=TOKEN, url=receiver.url))
    assert done.returncode == 0, done.stderr[-2000:]
    calls, handled, flushed = done.stdout.split()
    assert int(handled) > 50 and flushed == "True"
    assert "RecursionError" not in done.stderr
    assert receiver.wait_for(int(calls), timeout=10)
    assert len(set(receiver.message_ids())) == int(calls)
    assert time.monotonic() - started < 30


EXIT_SCRIPT = """
    import json, sys, threading
    from analytics_vitally import Client

    lock = threading.Lock()

    def on_error(error, messages):
        with lock:
            sys.stdout.write(json.dumps([m["messageId"] for m in messages]) + "\\n")
            sys.stdout.flush()

    client = Client({token!r}, host="http://127.0.0.1:{port}", exit_timeout={exit_timeout}, timeout=30,
                    retry_wait=0.05, upload_size=10, on_error=on_error)
    for i in range(250):
        client.track("u", "e", {{"i": i}})
"""


@pytest.mark.parametrize("server", ["never answers", "down"])
def test_at_exit_every_undelivered_message_goes_to_on_error_once(
    server: str, silent_port: int, closed_port: int
) -> None:
    port = silent_port if server == "never answers" else closed_port
    started = time.monotonic()
    done = run_script(EXIT_SCRIPT.format(token=TOKEN, port=port, exit_timeout=1.5))
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    reported: List[str] = [i for line in done.stdout.splitlines() for i in json.loads(line)]
    assert len(reported) == 250, done.stderr[-2000:]
    assert len(set(reported)) == 250
    assert "they are lost" not in done.stderr
    assert took < 1.5 + 3  # exit_timeout plus the interpreter's start and end


def test_at_exit_what_cannot_be_reported_in_time_is_counted_exactly(silent_port: int) -> None:
    done = run_script(
        f"""
        import time
        from analytics_vitally import Client

        client = Client({TOKEN!r}, host="http://127.0.0.1:{silent_port}", exit_timeout=0.5, timeout=30,
                        upload_size=10, on_error=lambda error, messages: time.sleep(60))
        for i in range(250):
            client.track("u", "e", {{"i": i}})
        """
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "250 message(s) not delivered at exit" in done.stderr


MANY_CLIENTS_SCRIPT = """
    import json, sys, threading, time
    from analytics_vitally import Client

    lock = threading.Lock()

    def on_error(error, messages):
        if messages[0]["properties"]["slow"]:
            time.sleep(60)  # an on_error that cannot finish in time: its messages are counted as lost
        with lock:
            sys.stdout.write(json.dumps([m["messageId"] for m in messages]) + "\\n")
            sys.stdout.flush()

    clients = [Client({token!r}, host="http://127.0.0.1:{port}", exit_timeout=2, timeout=30, retry_wait=0.05,
                      upload_size=100, on_error=on_error) for _ in range(10)]
    for number, client in enumerate(clients):
        for i in range({each}):
            client.track("u", "e", {{"i": i, "slow": number < {slow}}})
"""


@pytest.mark.parametrize("server", ["never answers", "down"])
def test_ten_clients_at_exit_share_the_exit_timeout_and_every_message_is_reported(
    server: str, silent_port: int, closed_port: int
) -> None:
    port = silent_port if server == "never answers" else closed_port
    started = time.monotonic()
    done = run_script(MANY_CLIENTS_SCRIPT.format(token=TOKEN, port=port, each=1000, slow=0))
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    reported = [i for line in done.stdout.splitlines() for i in json.loads(line)]
    assert len(reported) == 10_000, done.stderr[-2000:]  # was 4,900 to 5,100: later clients got no time
    assert len(set(reported)) == 10_000
    assert "lost" not in done.stderr  # was 5,800 logged as lost, some of them reported after all
    assert took < 2 + 3  # exit_timeout plus the interpreter's start and end


def test_ten_clients_at_exit_count_exactly_what_was_neither_delivered_nor_reported(closed_port: int) -> None:
    done = run_script(MANY_CLIENTS_SCRIPT.format(token=TOKEN, port=closed_port, each=300, slow=4))
    assert done.returncode == 0, done.stderr[-2000:]
    reported = [i for line in done.stdout.splitlines() for i in json.loads(line)]
    assert len(reported) == 6 * 300, done.stderr[-2000:]
    lost_lines = [line for line in done.stderr.splitlines() if "they are lost" in line]
    assert len(lost_lines) == 1, done.stderr[-2000:]  # one line for the process, not one per client
    assert "1200 message(s) not delivered at exit" in lost_lines[0]


def test_a_call_after_the_exit_drain_is_refused_and_counted(receiver: Receiver) -> None:
    done = run_script(
        f"""
        import atexit

        def late():  # registered before the library's drain, so it runs after it
            result = client.track("u", "late")[0]
            print(result, client.stats().dropped, flush=True)

        atexit.register(late)
        from analytics_vitally import Client
        client = Client({TOKEN!r}, host={receiver.url!r})
        client.track("u", "early")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "1"]
    assert "after the exit drain" in done.stderr
    assert receiver.wait_for(1)
    assert [m["event"] for m in receiver.messages] == ["early"]


def test_shutdown_from_on_error_returns_false(make_client: MakeClient, caplog: pytest.LogCaptureFixture) -> None:
    results: List[bool] = []
    client: Client

    def on_error(error: Exception, messages: List[object]) -> None:
        results.append(client.shutdown(timeout=5))

    client = make_client(write_key="wrong", on_error=on_error)
    client.track("u", "e")
    assert client.flush(timeout=10)
    assert results == [False]
    assert "shutdown() called from on_error" in caplog.text


def test_retries_are_counted_as_they_happen(make_client: MakeClient, receiver: Receiver) -> None:
    receiver.respond = lambda request: Reply(503, {"message": "busy"})
    client = make_client(retry_wait=0.05, max_retries=10, max_retry_time=60)
    client.track("u", "e")
    client.flush(timeout=0)  # start sending now
    deadline = time.monotonic() + 20
    while client.stats().retried < 2:
        assert time.monotonic() < deadline, "retries not counted while the batch is still being retried"
        time.sleep(0.01)
    stats = client.stats()
    assert (stats.sent, stats.failed) == (0, 0)  # the batch is still in flight


SIGTERM_SCRIPT = """
    import signal, sys, time
    from analytics_vitally import Client

    {own_handler}
    client = Client({token!r}, host={url!r}, upload_interval=60, drain_on_sigterm={drain})
    for i in range(250):
        client.track("u", "e", {{"i": i}})
    print("queued", flush=True)
    time.sleep(60)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
@pytest.mark.parametrize(
    ("drain", "own_handler", "arrives", "status"),
    [
        (True, "", 250, -signal.SIGTERM),  # drained, then still ended by SIGTERM
        (False, "", 200, -signal.SIGTERM),  # the default action: the last 50 (not a full batch) are lost
        (True, "signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))", 250, 3),  # the program's own: kept
    ],
    ids=["default-action", "drain_on_sigterm=False", "own-handler"],
)
def test_sigterm_with_its_default_action_drains_first(
    receiver: Receiver, drain: bool, own_handler: str, arrives: int, status: int
) -> None:
    code = SIGTERM_SCRIPT.format(token=TOKEN, url=receiver.url, drain=drain, own_handler=own_handler)
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "queued"
        assert receiver.wait_for(200, timeout=10)  # the two full batches left on their size
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == status
    finally:
        process.kill()
        process.communicate()  # closes its pipes
    assert receiver.wait_for(arrives, timeout=10)  # the process is gone: nothing more can come
    ids = receiver.message_ids()
    assert (len(ids), len(set(ids))) == (arrives, arrives)


@pytest.mark.parametrize("lane", ["direct", "proxied"])
def test_sync_mode_connections_are_closed_by_shutdown_and_never_left_to_the_collector(lane: str) -> None:
    """sync_mode keeps a connection per calling thread: shutdown() closes the caller's, and one whose
    thread ended or whose client nobody references any more is closed, not left to warn
    ``ResourceWarning: unclosed socket`` (an error in test suites run with ``-W error``)."""
    with HostileServer(ok) as server, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        port = server.port
        # Proxied: the server is the proxy too (it answers whatever is asked of it, absolute URIs included).
        settings: Dict[str, Any] = {"proxies": {"http": server.url}} if lane == "proxied" else {}
        client = Client(TOKEN, host=server.url, sync_mode=True, **settings)
        assert client.track("u", "kept-alive")[0] and client.track("u", "same connection")[0]
        assert server.connections == 1
        assert server.requests[0].head.startswith(b"POST http://" if lane == "proxied" else b"POST /")
        assert client.shutdown(timeout=5)
        assert server.wait_for_closed(1, timeout=5)  # while the client is still referenced

        dropped = Client(TOKEN, host=server.url, sync_mode=True, **settings)
        callers = [threading.Thread(target=dropped.track, args=("u", f"from thread {n}")) for n in range(3)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        assert dropped.track("u", "from the test's thread")[0]
        del dropped
        gc.collect()
        assert server.wait_for_closed(5, timeout=5)
        assert len(server.messages) == 6
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert [text for text in unclosed if f", {port})" in text] == []


DROPPED_CLIENTS_SCRIPT = """
    import gc, os, resource, sys, threading, time
    from analytics_vitally import Client

    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))  # as under `ulimit -n 1024`
    fds = lambda: len(os.listdir("/proc/self/fd"))
    before_fds, before_threads = fds(), threading.active_count()
    reported = []
    peak_fds, peak_threads = 0, 0
    for n in range(300):
        spool = {{"spool": os.path.join({base!r}, f"s{{n}}")}} if {spool} else {{}}
        client = Client({token!r}, host="http://127.0.0.1:{port}", exit_timeout=1,
                        on_error=lambda error, messages: reported.extend(str(error) for _ in messages), **spool)
        client.track("u", "e", {{"n": n}})
        del client
        peak_fds = max(peak_fds, fds() - before_fds)
    gc.collect()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the dropped clients settle (or 30 s)
        peak_fds = max(peak_fds, fds() - before_fds)
        peak_threads = max(peak_threads, threading.active_count() - before_threads)
        if threading.active_count() - before_threads <= {settled_threads}:
            break
        time.sleep(0.02)
    open(os.devnull).close()  # the app's own open() still works
    print(fds() - before_fds, threading.active_count() - before_threads, peak_fds, len(reported), flush=True)
    print(sorted(set(reported))[:1], flush=True)
"""


def test_dropped_clients_with_a_spool_let_go_of_threads_and_files_at_their_first_failed_try(
    closed_port: int, tmp_path: Any
) -> None:
    done = run_script(
        DROPPED_CLIENTS_SCRIPT.format(token=TOKEN, port=closed_port, base=str(tmp_path), spool=True, settled_threads=1)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    fds, threads, peak_fds, reported = (int(value) for value in done.stdout.split("\n")[0].split())
    assert peak_fds < 50 and fds < 50, done.stdout  # was 602: each kept its thread and spool files for 60 s
    assert threads <= 1, done.stdout  # the request deadlines' watchdog may remain
    assert reported == 0  # nothing failed for good: every message waits in its spool
    assert "they are lost" not in done.stderr
    # Vitally is back: a later process sends what they left.
    from analytics_vitally.durable import send_leftovers

    with Receiver(TOKEN, port=closed_port) as receiver:
        host = f"http://127.0.0.1:{closed_port}"
        sent = sum(send_leftovers(str(tmp_path / f"s{n}"), write_key=TOKEN, host=host)[0] for n in range(300))
        assert sent == 300
        assert sorted(m["properties"]["n"] for m in receiver.messages) == list(range(300))


def test_at_most_50_dropped_clients_without_a_spool_retry_at_once(closed_port: int) -> None:
    from analytics_vitally.lifecycle import MAX_DROPPED_RETRYING

    done = run_script(
        DROPPED_CLIENTS_SCRIPT.format(
            token=TOKEN, port=closed_port, base="", spool=False, settled_threads=MAX_DROPPED_RETRYING + 1
        )
    )
    assert done.returncode == 0, done.stderr[-2000:]
    counts, reasons = done.stdout.split("\n")[:2]
    _, threads, _, reported = (int(value) for value in counts.split())
    assert threads <= MAX_DROPPED_RETRYING + 1, done.stdout  # was 300 threads retrying for 60 s
    assert reported == 300 - MAX_DROPPED_RETRYING  # the oldest were tried once more, then reported
    assert "more than 50 dropped clients were retrying" in reasons
    assert "they are lost" not in done.stderr  # the last 50 are reported by the exit drain
