"""Process models (issue 15): every common way a process makes a client and ends delivers what it queued.

Each case runs in a fresh interpreter against the local receiver, exits without ``flush()`` or
``shutdown()`` unless it says otherwise, and counts what arrived: every message exactly once
(messageIds compared with those the program was given, or with its properties where children
made them), none repeated.

- A client that went out of scope (a local variable of ``main()``, an ``AsyncClient`` made in
  ``asyncio.run(main())``) is drained at exit.
- 300 clients made, used once and dropped leave no thread, descriptor or spool lock behind.
- ``multiprocessing`` with fork, spawn and forkserver, ``Process`` and ``Pool`` (close + join),
  the client made at the script's module level or in the child's target.
- A short-lived process on a spool a killed process filled: ``configure()`` then ``flush()``
  (or only ``configure()`` and exit) sends the whole backlog.
- uvicorn without a lifespan shutdown, one process and ``workers=2`` (its test says what ends
  uvicorn's processes, and so what can be asked of the library there).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple

import pytest

from analytics_vitally.spool import inspect
from analytics_vitally.testing import Receiver, Reply

from .conftest import TOKEN, run_script
from .test_recipes import (  # the fixtures are used by name
    StartServer,
    listener,
    requests_in_parallel,
    server_env,
    start_server,
)

__all__ = ["listener", "server_env", "start_server"]  # fixtures, imported to be used here

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork, /proc and flock")

ARRIVAL_WAIT = 5.0
"""Seconds to wait for messages once the sending process has ended: its drain is over by then, so
this only covers the receiver recording the last batch; a longer wait would only slow the failures."""


def assert_each_arrived_once(receiver: Receiver, given: Iterable[str], timeout: float = ARRIVAL_WAIT) -> None:
    expected = list(given)
    assert len(set(expected)) == len(expected), "the program was given repeated messageIds"
    receiver.wait_for(len(expected), timeout=timeout)
    arrived = receiver.message_ids()
    missing = set(expected) - set(arrived)
    repeated = len(arrived) - len(set(arrived))
    unknown = set(arrived) - set(expected)
    assert (len(missing), repeated, len(unknown)) == (0, 0, 0), (
        f"{len(set(arrived) & set(expected))} of {len(expected)} arrived; "
        f"{len(missing)} missing, {repeated} repeated, {len(unknown)} unknown"
    )


def run_file(path: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the script ``path`` (importable again by spawn and forkserver children, unlike ``-c``)."""
    return subprocess.run(
        [sys.executable, str(path)],
        cwd=path.parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json(stdout: str) -> Any:
    return json.loads(stdout.strip().splitlines()[-1])


# A client that went out of scope ------------------------------------------------------------------

OUT_OF_SCOPE = {
    "client": """
        import json
        from analytics_vitally import Client

        def main():
            client = Client({token!r}, host={url!r}, upload_interval=60)
            return [client.track("u", "e", {{"i": i}}) for i in range({count})]

        results = main()  # the client is unreachable from here on; no flush, no shutdown
        print(json.dumps([[queued, message["messageId"]] for queued, message in results]))
        """,
    "async-client": """
        import asyncio, json
        from analytics_vitally import AsyncClient

        async def main():
            client = AsyncClient({token!r}, host={url!r}, upload_interval=60)
            return [await client.track("u", "e", {{"i": i}}) for i in range({count})]

        results = asyncio.run(main())  # no flush, no shutdown, the loop is closed
        print(json.dumps([[queued, message["messageId"]] for queued, message in results]))
        """,
}


@pytest.mark.parametrize(
    ("kind", "count"), [("client", 1000), ("client", 50), ("async-client", 50)], ids=["1000", "50", "async-50"]
)
def test_a_client_out_of_scope_is_drained_at_exit(receiver: Receiver, kind: str, count: int) -> None:
    done = run_script(OUT_OF_SCOPE[kind].format(token=TOKEN, url=receiver.url, count=count))
    assert done.returncode == 0, done.stderr[-2000:]
    results: List[Tuple[bool, str]] = last_json(done.stdout)
    assert [queued for queued, _ in results] == [True] * count
    assert_each_arrived_once(receiver, [message_id for _, message_id in results])


# Clients dropped leave nothing behind ------------------------------------------------------------

DROPPED = 300
SLACK = 2
"""Threads or descriptors allowed above the level before the 300 clients: room for process-wide objects
made at first use, once per process whatever the number of clients (the warm-up client below already
made those it needs), never one per client. Spool locks and maps get no slack."""

DROPPED_CLIENTS = """
    import gc, json, os, threading, time, urllib.request, weakref
    from analytics_vitally import Client

    SETTINGS = {settings!r}
    URL = {url!r}

    def flocks():
        # Every flock this process holds, on any file, named or unlinked (/proc/locks gives the pid).
        held = 0
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if fields[1] == "->":  # a waiter, not a holder
                    continue
                held += fields[1] == "FLOCK" and fields[4] == str(os.getpid())
        return held

    def level():
        spool = SETTINGS.get("spool")
        with open("/proc/self/maps") as maps:
            mapped = sum(1 for line in maps if spool and spool in line)
        return {{
            "threads": threading.active_count(),
            "os_threads": len(os.listdir("/proc/self/task")),
            "fds": len(os.listdir("/proc/self/fd")),
            "flocks": flocks(),
            "spool_maps": mapped,
        }}

    def arrived():
        with urllib.request.urlopen(URL + "/messages", timeout=10) as answer:
            return len(json.loads(answer.read()))

    def settled(now, before):
        return all(now[key] <= before[key] + ({slack} if key in ("threads", "os_threads", "fds") else 0)
                   for key in before)

    ids, dropped = [], []
    with Client({token!r}, host=URL, **SETTINGS) as warm:  # process-wide objects made at first use exist now
        ids.append(warm.track("warm", "up")[1]["messageId"])
    del warm
    gc.collect()
    before = level()

    for i in range({count}):
        client = Client({token!r}, host=URL, **SETTINGS)
        queued, message = client.track("u", "e", {{"i": i}})
        assert queued, message
        ids.append(message["messageId"])
        dropped.append(weakref.ref(client))
    del client  # no shutdown: dropped
    peak = level()

    started = time.monotonic()
    while True:
        gc.collect()
        now = level()
        alive = sum(ref() is not None for ref in dropped)
        if (settled(now, before) and alive == 0 and arrived() >= len(ids)) or time.monotonic() - started > 10:
            break
        time.sleep(0.1)
    print(json.dumps({{"before": before, "peak": peak, "after": now, "seconds": time.monotonic() - started,
                      "clients_alive": alive, "ids": ids}}))
"""


@pytest.mark.parametrize("with_spool", [False, True], ids=["memory", "spool"])
def test_clients_dropped_after_sending_leave_no_thread_fd_or_lock(
    receiver: Receiver, tmp_path: Path, with_spool: bool
) -> None:
    # A small spool budget makes small segment files (64 KiB instead of 1 MiB): 300 clients write
    # 40 MiB of zeros instead of 600, and what is counted (locks, maps) does not depend on the size.
    settings: Dict[str, Any] = {"spool": str(tmp_path / "spool"), "max_spool_bytes": 1 << 18} if with_spool else {}
    done = run_script(
        DROPPED_CLIENTS.format(token=TOKEN, url=receiver.url, settings=settings, count=DROPPED, slack=SLACK)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = last_json(done.stdout)
    before, peak, after = report["before"], report["peak"], report["after"]
    summary = (
        f"before {before}, right after the clients {peak}, {report['seconds']:.1f} s later {after}, "
        f"{report['clients_alive']} of the {DROPPED} clients not collected"
    )
    assert report["clients_alive"] == 0, summary  # a client with nothing left to send can be collected
    for key in ("threads", "os_threads", "fds"):
        assert after[key] <= before[key] + SLACK, summary
    for key in ("flocks", "spool_maps"):
        assert after[key] <= before[key], summary
    assert_each_arrived_once(receiver, report["ids"])  # the warm-up message and the 300
    print(f"spool={with_spool}: {summary}")


# multiprocessing ---------------------------------------------------------------------------------

CHILDREN, PER_CHILD = 4, 150
"""150, not 100: a child's last 50 messages are fewer than upload_size (100), so only a drain at the child's
end can send them. With 100 a child's batch leaves on its size while the process lives on (a Pool worker
waits for close()), and whether it arrives depends on how soon the child ends, not on the drain."""

MULTIPROCESSING = """
    import multiprocessing
    from analytics_vitally import Client

    def make():
        return Client({token!r}, host={url!r}, upload_interval=60)

    client = make() if {where!r} == "module" else None  # spawn and forkserver children import this too

    def work(n):
        own = client if client is not None else make()  # "target": the child's own, dropped when work returns
        for i in range({per_child}):
            queued, message = own.track("u", "e", {{"child": n, "i": i}})
            assert queued, message
        return n

    if __name__ == "__main__":
        context = multiprocessing.get_context({method!r})
        if {shape!r} == "process":
            children = [context.Process(target=work, args=(n,)) for n in range({children})]
            for child in children:
                child.start()
            for child in children:
                child.join()
            print([child.exitcode for child in children])
        else:
            pool = context.Pool({children})
            print(pool.map(work, range({children}), chunksize=1))
            pool.close()
            pool.join()
"""


@pytest.mark.parametrize("where", ["module", "target"], ids=["client-at-module-level", "client-in-target"])
@pytest.mark.parametrize("shape", ["process", "pool"])
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_children_deliver_without_flush(
    receiver: Receiver, tmp_path: Path, method: str, shape: str, where: str
) -> None:
    script = tmp_path / "children.py"
    script.write_text(
        textwrap.dedent(
            MULTIPROCESSING.format(
                token=TOKEN,
                url=receiver.url,
                method=method,
                shape=shape,
                where=where,
                children=CHILDREN,
                per_child=PER_CHILD,
            )
        )
    )
    done = run_file(script)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = [0] * CHILDREN if shape == "process" else list(range(CHILDREN))
    assert done.stdout.split("\n")[0] == str(expected), done.stdout + done.stderr[-2000:]
    receiver.wait_for(CHILDREN * PER_CHILD, timeout=ARRIVAL_WAIT)
    made = sorted((m["properties"]["child"], m["properties"]["i"]) for m in receiver.messages)
    wanted = [(n, i) for n in range(CHILDREN) for i in range(PER_CHILD)]
    per_child = {n: sum(1 for child, _ in made if child == n) for n in range(CHILDREN)}
    assert made == wanted, f"{len(made)} of {len(wanted)} arrived, per child {per_child}"
    assert len(set(receiver.message_ids())) == len(wanted)


# A short-lived process on a spool a killed process filled ---------------------------------------

BACKLOG = 5000

SPOOLER = """
    import json, sys, time
    from analytics_vitally import Client

    client = Client({token!r}, host={host!r}, spool={spool!r}, upload_interval=60)
    ids = []
    for i in range({count}):
        queued, message = client.track("u", "e", {{"i": i}})
        assert queued, message
        ids.append(message["messageId"])
    with open({ids!r}, "w") as out:
        json.dump(ids, out)
    print("spooled", flush=True)  # every call returned: the messages are in the spool's files
    time.sleep(120)
"""

CRON_JOB = {
    "flush": """
        import time
        import analytics_vitally
        analytics_vitally.configure(write_key={token!r}, host={url!r}, spool={spool!r})
        started = time.monotonic()
        flushed = analytics_vitally.flush()
        print(flushed, round(time.monotonic() - started, 2), analytics_vitally.stats())
        """,
    "exit": """
        import analytics_vitally
        analytics_vitally.configure(write_key={token!r}, host={url!r}, spool={spool!r})
        """,
}


def fill_spool_and_kill(receiver: Receiver, tmp_path: Path, spool: Path, count: int) -> List[str]:
    """A process for whom Vitally is down (the receiver answers 503) spools ``count`` messages and is
    SIGKILLed: their IDs. The same destination as the process that sends them later (a spool's files
    are adopted only by a process with the same endpoint and write key)."""
    receiver.respond = lambda request: Reply(503, {"message": "down"})
    ids = tmp_path / "spooled-ids.json"
    code = SPOOLER.format(token=TOKEN, host=receiver.url, spool=str(spool), count=count, ids=str(ids))
    spooler = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert spooler.stdout is not None
        deadline = time.monotonic() + 60
        line = b""
        while not line and time.monotonic() < deadline and spooler.poll() is None:
            if select.select([spooler.stdout], [], [], 0.1)[0]:
                line = spooler.stdout.readline()
        assert line == b"spooled\n", (line, spooler.poll())
    finally:
        spooler.kill()
        _, stderr = spooler.communicate(timeout=10)
    assert spooler.returncode == -signal.SIGKILL, stderr.decode(errors="replace")[-2000:]
    spooled: List[str] = json.loads(ids.read_text())
    assert inspect(str(spool)).pending == count and receiver.messages == []  # all on disk, none delivered
    receiver.respond = None  # Vitally is up again
    return spooled


@pytest.mark.parametrize("ending", ["flush", "exit"], ids=["configure-flush", "configure-exit"])
def test_a_short_lived_process_sends_the_whole_backlog_a_killed_one_left(
    receiver: Receiver, tmp_path: Path, ending: str
) -> None:
    spool = tmp_path / "spool"
    spooled = fill_spool_and_kill(receiver, tmp_path, spool, BACKLOG)
    done = run_script(CRON_JOB[ending].format(token=TOKEN, url=receiver.url, spool=str(spool)))
    assert done.returncode == 0, done.stderr[-2000:]
    if ending == "flush":
        assert done.stdout.split()[0] == "True", done.stdout + done.stderr[-2000:]
    assert_each_arrived_once(receiver, spooled)
    assert inspect(str(spool)).pending == 0
    print(f"{ending}: {done.stdout.strip()}")


# uvicorn without a lifespan shutdown -------------------------------------------------------------

ASGI_APP = """
import json, os
import analytics_vitally

analytics_vitally.upload_interval = 60  # nothing leaves on the interval: only a shutdown path delivers
analytics_vitally.configure()  # VITALLY_WRITE_KEY and VITALLY_HOST from the environment
print("app imported in", os.getpid(), flush=True)


async def app(scope, receive, send):
    if scope["type"] != "http":  # lifespan="off": never called with "lifespan"
        return
    queued, message = analytics_vitally.track(scope["path"].strip("/"), "page-viewed")
    body = json.dumps({"queued": queued, "messageId": message["messageId"], "worker": os.getpid()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""

UVICORN_REQUESTS = 250
"""Not a multiple of upload_size (100) however the requests split between workers: with 300 and one
process, three full batches leave on their size and nothing is left for the end to lose."""

LOST = re.compile(r"(\d+) message\(s\) not delivered")
"""How the library counts what it could not deliver (as in the exit drain's ERROR line)."""


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers-2"])
def test_uvicorn_without_lifespan_shutdown_loses_nothing_silently(
    start_server: StartServer,
    listener: socket.socket,
    receiver: Receiver,
    server_env: Dict[str, str],
    tmp_path: Path,
    workers: int,
) -> None:
    """What ends uvicorn's processes (uvicorn 0.55's source, and measured with atexit and
    multiprocessing finalizers that print, and the workers' exit codes):

    - ``Server.serve()`` sets its own SIGTERM/SIGINT handlers (``capture_signals``), and when the
      graceful shutdown is over, still inside ``serve()`` (the loop not yet closed), restores the
      handlers it found and raises the caught SIGTERM again. With SIG_DFL found, the process dies of
      the signal: no ``atexit``, no multiprocessing finalizer, no loop teardown; no Python code
      runs after the re-raise, so nothing can be drained or logged from then on.
    - One process (``uvicorn.run(app)``): the app, and ``configure()`` at its import, run before
      ``capture_signals``, so a SIGTERM handler the library holds from ``configure()`` is what
      uvicorn restores and raises the signal to, after the graceful shutdown. Measured: such a
      handler ending in ``sys.exit`` runs the exit drain and 250 of 250 arrive. So here every message
      must arrive (exit status -15 today, 200 of 250, nothing logged).
    - ``workers=2``: the supervisor sends SIGTERM (never SIGKILL) to each worker, a spawn
      multiprocessing child, and joins it; each worker dies of its own re-raised SIGTERM (exit code
      -15) inside its target, so the finalizer the library registers in multiprocessing children does
      not run either. The app is imported inside ``capture_signals``: what it installs then replaces
      uvicorn's handler while serving, and SIG_DFL is restored before the re-raise. Library code can
      run only when the signal arrives (chaining uvicorn's handler), not after the graceful shutdown.
      So the claim here is the issue's: every message arrives once, or the library logs the exact
      count it did not deliver (delivered + logged == sent); never a silent loss.

    250 requests, not 300: 300 in one process are three full batches, sent on their size, and
    nothing is left for the end to lose (300 of 300 arrive today). The supervisor exits 0.
    """
    pytest.importorskip("uvicorn")
    (tmp_path / "asgi_no_lifespan.py").write_text(ASGI_APP)
    env = {**server_env, "PYTHONPATH": os.pathsep.join([str(tmp_path), server_env["PYTHONPATH"]])}
    server = start_server(
        f"""
        import uvicorn
        uvicorn.run("asgi_no_lifespan:app", fd={listener.fileno()}, lifespan="off", workers={workers},
                    log_level="warning")
        """,
        cwd=tmp_path,
        env=env,
        pass_fds=[listener.fileno()],
    )
    server.wait_for_output(rf"(app imported in \d+[\s\S]*){{{workers}}}")  # each worker is up (or nearly)
    port = listener.getsockname()[1]
    answers = requests_in_parallel([f"http://127.0.0.1:{port}/user-{n}" for n in range(UVICORN_REQUESTS)])
    assert all(answer["queued"] for answer in answers)
    sent = [answer["messageId"] for answer in answers]
    status = server.stop(signal.SIGTERM)
    output = server.output()
    assert status in (0, -signal.SIGTERM), output
    assert "Traceback" not in output, output
    receiver.wait_for(len(sent), timeout=ARRIVAL_WAIT)
    arrived = receiver.message_ids()
    assert len(arrived) == len(set(arrived)) and set(arrived) <= set(sent)
    logged = sum(int(count) for count in LOST.findall(output))
    served_by = len({answer["worker"] for answer in answers})
    outcome = (
        f"{len(arrived)} of {len(sent)} arrived and {logged} were reported lost in the log "
        f"(exit status {status}, {served_by} worker(s) served); its output:\n{output[-2000:]}"
    )
    assert (len(arrived), logged) == (len(sent), 0), outcome  # every one, also with --workers
    print(f"uvicorn workers={workers}: {len(arrived)} of {len(sent)} arrived, {logged} logged as lost")
