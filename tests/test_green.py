"""Green threads: gevent and eventlet, with the library imported before or after monkey-patching.

Each case runs in a fresh interpreter against the local receiver and counts what arrived:
every message exactly once, with the messageIds the program reported, and the program
exits on its own well within its bounds.

- A script: the library imported before or after ``gevent.monkey.patch_all()`` or
  ``eventlet.monkey_patch()``, 300 messages, exit without flush (a ``Client`` and the
  module-level API).
- gunicorn ``-k gevent`` and ``-k eventlet`` (eventlet's worker exists up to gunicorn 23),
  with and without ``--preload``: with it, the master imports the app (and the library)
  before each worker patches; without it, each worker imports them after patching.
- Celery ``--pool=gevent``: the ``celery`` command patches before it imports the app; the
  library may have been imported earlier still.

The servers run as in tests/test_recipes.py (own session, killed whole at the end), with
``upload_interval=60`` set before the app configures the library: nothing leaves on the
interval, so what arrives was delivered by the shutdown path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from analytics_vitally.testing import Receiver, Reply

from .conftest import TOKEN
from .test_recipes import (  # the fixtures are used by name
    WORKER_READY_HOOK,
    CeleryRig,
    StartServer,
    assert_delivered_once,
    gunicorn_options,
    listener,
    server_env,
    start_server,
)

__all__ = ["listener", "server_env", "start_server"]  # fixtures, imported to be used here

PATCH = {
    "gevent": "from gevent import monkey; monkey.patch_all()",
    "eventlet": "import eventlet; eventlet.monkey_patch()",
}
"""What a program runs first to go green, as each library documents."""

BEFORE, AFTER = "imported-before-patching", "imported-after-patching"

SCRIPT_MESSAGES = 300
SCRIPT_EXIT_BOUND = 30.0
"""Seconds a script may take, its exit drain included (exit_timeout is 5 s): hung if longer."""

REQUESTS = 300
SHUTDOWN_BOUND = 20.0
"""Seconds a server may take to exit after SIGTERM: well under gunicorn's 30 s graceful timeout."""

LONG_INTERVAL_APP = """
import analytics_vitally
analytics_vitally.upload_interval = 60  # only the shutdown path can deliver
from {module} import {name}  # noqa: F401  (the example configures the library at import)
"""
"""A module that sets the interval, then imports the example: wherever the server imports it."""


def importable(name: str) -> bool:
    """Whether module ``name`` exists, without importing it (gunicorn's eventlet worker imports eventlet)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def assert_arrived(receiver: Receiver, message_ids: List[str], output: str) -> None:
    """Each of ``message_ids`` arrived once; if some are missing, say so with the program's ``output``."""
    if not receiver.wait_for(len(message_ids), timeout=10):
        pytest.fail(f"{len(receiver.messages)} of {len(message_ids)} messages arrived; the output:\n{output[-6000:]}")
    assert_delivered_once(receiver, message_ids)


def as_text(output: Any) -> str:
    """What a subprocess printed, whichever type ``TimeoutExpired`` carries it in."""
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def run_bounded(path: Path, timeout: float) -> Tuple[Optional[int], str, float]:
    """Run ``path`` in a fresh interpreter: (exit code, or None if killed after ``timeout`` s; output; seconds)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("VITALLY_")}
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, str(path)],
            cwd=path.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as hung:  # run() killed it
        return None, as_text(hung.stdout) + as_text(hung.stderr), time.monotonic() - started
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


# A script ---------------------------------------------------------------------------------


def script(library: str, order: str, api: str, ids_file: Path, url: str) -> str:
    first, second = ("import analytics_vitally", PATCH[library])
    if order == AFTER:
        first, second = second, first
    if api == "client":
        make = f"client = analytics_vitally.Client({TOKEN!r}, host={url!r})"
        track = "client.track"
    else:
        make = f"analytics_vitally.write_key = {TOKEN!r}; analytics_vitally.host = {url!r}"
        track = "analytics_vitally.track"
    return textwrap.dedent(
        f"""
        {first}
        {second}
        import json

        {make}
        ids = []
        for n in range({SCRIPT_MESSAGES}):
            queued, message = {track}(f"user-{{n}}", "page-viewed", {{"n": n}}, account_id="acct-1")
            assert queued, message
            ids.append(message["messageId"])
        with open({str(ids_file)!r}, "w") as out:
            json.dump(ids, out)
        print("tracked", len(ids), flush=True)
        # no flush, no shutdown: the exit drain delivers
        """
    )


@pytest.mark.parametrize("api", ["client", "module-api"])
@pytest.mark.parametrize("order", [BEFORE, AFTER])
@pytest.mark.parametrize("library", ["gevent", "eventlet"])
def test_script_delivers_everything_and_exits(
    receiver: Receiver, tmp_path: Path, library: str, order: str, api: str
) -> None:
    pytest.importorskip(library)
    ids_file = tmp_path / "ids.json"
    path = tmp_path / "green_script.py"
    path.write_text(script(library, order, api, ids_file, receiver.url))
    code, output, elapsed = run_bounded(path, SCRIPT_EXIT_BOUND)
    if code is None:
        pytest.fail(
            f"still running {SCRIPT_EXIT_BOUND:.0f}s after it started (killed); "
            f"{len(receiver.messages)} of {SCRIPT_MESSAGES} messages arrived; its output:\n{output}"
        )
    assert code == 0, output
    assert "Traceback" not in output, output
    assert_arrived(receiver, json.loads(ids_file.read_text()), output)
    print(f"{library} {order} {api}: {len(receiver.messages)} of {SCRIPT_MESSAGES} delivered, exit in {elapsed:.1f}s")


# gunicorn ---------------------------------------------------------------------------------


def answer_all(urls: List[str], clients: int = 8, budget: float = 60.0) -> List[Tuple[int, Any]]:
    """(status, JSON body or error text) for each URL, from ``clients`` at once; none sent after ``budget`` s."""
    deadline = time.monotonic() + budget

    def one(url: str) -> Tuple[int, Any]:
        if time.monotonic() > deadline:
            return 0, f"not sent: the {budget:.0f}s for all requests had passed"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")[-300:]
        except OSError as error:
            return 0, repr(error)

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, urls))


@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
@pytest.mark.parametrize("worker_class", ["gevent", "eventlet"])
def test_gunicorn_green_workers_deliver_every_request_at_sigterm(
    start_server: StartServer,
    listener: socket.socket,
    receiver: Receiver,
    server_env: Dict[str, str],
    tmp_path: Path,
    worker_class: str,
    preload: bool,
) -> None:
    pytest.importorskip("gunicorn")
    pytest.importorskip(worker_class)
    if not importable(f"gunicorn.workers.g{worker_class}"):  # gunicorn 24 removed the eventlet worker
        pytest.skip(f"this gunicorn has no {worker_class} worker (eventlet's needs gunicorn<24)")
    (tmp_path / "green_wsgi.py").write_text(LONG_INTERVAL_APP.format(module="wsgi_app", name="application"))
    ready = tmp_path / "gunicorn_ready.py"  # see the gunicorn test in test_recipes.py
    ready.write_text(WORKER_READY_HOOK)
    argv = ["gunicorn", "--worker-class", worker_class, "--workers", "2", "--bind", f"fd://{listener.fileno()}"]
    argv += ["--config", str(ready), *gunicorn_options(), *(["--preload"] if preload else [])]
    env = {**server_env, "PYTHONPATH": os.pathsep.join([str(tmp_path), server_env["PYTHONPATH"]])}
    server = start_server(
        f"""
        import sys
        from gunicorn.app.wsgiapp import run
        sys.argv = {[*argv, "green_wsgi:application"]!r}
        run()
        """,
        env=env,
        long_interval=False,  # green_wsgi sets it, where gunicorn imports the app
        pass_fds=[listener.fileno()],
    )
    port = listener.getsockname()[1]
    answers = answer_all([f"http://127.0.0.1:{port}/user-{n}" for n in range(REQUESTS)])
    server.wait_for_output(r"(worker ready \d+[\s\S]*){2}")
    stopped = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(SHUTDOWN_BOUND)
    except subprocess.TimeoutExpired:
        code = None
    took = time.monotonic() - stopped
    ok = [body for status, body in answers if status == 200 and isinstance(body, dict) and body["queued"]]
    failed = [(status, body) for status, body in answers if status != 200 or not isinstance(body, dict)]
    problems = []
    if failed:
        problems.append(f"{len(failed)} of {REQUESTS} requests failed, e.g. {failed[:2]}")
    if code is None:
        problems.append(f"the master was still running {SHUTDOWN_BOUND:.0f}s after SIGTERM")
    elif code != 0:
        problems.append(f"the master exited with {code}")
    if problems:
        receiver.wait_for(len(ok), timeout=5)
        problems.append(f"{len(receiver.messages)} of {len(ok)} queued messages arrived")
        pytest.fail("; ".join(problems) + f"\nthe server's output:\n{server.output()[-6000:]}")
    assert len(ok) == REQUESTS
    assert_arrived(receiver, [body["messageId"] for body in ok], server.output())
    print(
        f"gunicorn -k {worker_class} preload={preload}: {REQUESTS} sent, {len(receiver.messages)} delivered, "
        f"{len({body['worker'] for body in ok})} workers served, master exited {took:.1f}s after SIGTERM"
    )


# Celery, gevent pool ----------------------------------------------------------------------

TASKS = 60


@pytest.mark.parametrize("order", ["celery-command", BEFORE])
def test_celery_gevent_pool_delivers_every_task_at_warm_shutdown(
    start_server: StartServer, tmp_path: Path, server_env: Dict[str, str], receiver: Receiver, order: str
) -> None:
    pytest.importorskip("gevent")
    rig = CeleryRig(tmp_path, server_env)
    from celery.exceptions import TimeoutError as TasksNotDone

    (tmp_path / "green_celery.py").write_text(LONG_INTERVAL_APP.format(module="celery_app", name="app"))
    # The celery command patches first (its --pool option), then imports the app. With BEFORE, the
    # library is already imported when it patches (as by code run before the command's main()).
    worker = start_server(rig.worker_code("green_celery", "gevent", 20), env=rig.env, long_interval=order == BEFORE)
    sender = rig.sender
    deadline = time.monotonic() + 60
    message_ids: List[str] = []
    try:
        results = [sender.send_task("celery_app.record_signup", args=[f"user-{n}", "acct-1"]) for n in range(TASKS)]
        for result in results:
            message_ids.append(result.get(timeout=max(0.1, deadline - time.monotonic())))
    except TasksNotDone:
        pytest.fail(f"{len(message_ids)} of {TASKS} tasks done within 60s; the worker's output:\n{worker.output()}")
    finally:
        sender.close()
    stopped = time.monotonic()
    assert worker.stop(signal.SIGTERM, timeout=SHUTDOWN_BOUND) == 0, worker.output()  # warm shutdown
    took = time.monotonic() - stopped
    assert_arrived(receiver, message_ids, worker.output())
    print(f"celery --pool=gevent {order}: {TASKS} tasks, {len(receiver.messages)} delivered, exit in {took:.1f}s")


# A client made before the patching (as gunicorn --preload makes it in the master) ---------------


def run_green(library: str, code: str) -> subprocess.CompletedProcess[str]:
    pytest.importorskip(library)
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_EXIT_BOUND,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("library", ["gevent", "eventlet"])
def test_worker_greenlets_keep_a_connection_each(receiver: Receiver, library: str) -> None:
    # Made before the patching, the transport's per-thread connections were one for all greenlets.
    done = run_green(
        library,
        f"""
        from analytics_vitally import Client
        client = Client({TOKEN!r}, host={receiver.url!r}, thread=4, upload_size=10, upload_interval=60)
        {PATCH[library]}
        for i in range(2000):
            client.track("u", "e", {{"i": i}})
        print(client.flush(timeout=20), client.stats().sent, client.stats().failed, client.stats().retried)
        """,
    )
    assert done.stdout.split() == ["True", "2000", "0", "0"], done.stderr[-3000:]
    assert receiver.wait_for(2000)
    ids = receiver.message_ids()
    assert (len(ids), len(set(ids))) == (2000, 2000)


@pytest.mark.parametrize("library", ["gevent", "eventlet"])
def test_a_retry_wait_never_blocks_the_hub(receiver: Receiver, library: str) -> None:
    answers = iter([Reply(503, {"message": "busy"}, headers={"Retry-After": "1"})])
    receiver.respond = lambda request: next(answers, None)
    sleep = f"{library}.sleep"
    done = run_green(
        library,
        f"""
        import time
        from analytics_vitally import Client
        client = Client({TOKEN!r}, host={receiver.url!r}, upload_interval=60)
        {PATCH[library]}
        import {library}
        ticks = []

        def tick():
            while True:
                ticks.append(time.monotonic())
                {sleep}(0.01)

        {library}.spawn(tick)
        {sleep}(0.05)
        client.track("u", "e")
        print(client.flush(timeout=10), client.stats().retried)
        print(max(later - earlier for earlier, later in zip(ticks, ticks[1:])))
        """,
    )
    flushed, longest = done.stdout.splitlines()
    assert flushed == "True 1"
    assert float(longest) < 0.5, f"the hub stood still {float(longest):.2f} s during the 1 s Retry-After"
    assert receiver.wait_for(1)
