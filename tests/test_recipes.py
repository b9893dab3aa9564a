"""The recipes in examples/, each run in its real framework against the local receiver.

Every test counts what arrived: each message exactly once, with the messageIds the app
reported. Servers run in subprocesses in their own session (killed whole at the end,
whatever happened), with ``upload_interval=60`` set before the app configures the library:
nothing leaves on the interval, so what arrives was delivered by the shutdown path the
recipe relies on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import pytest

from analytics_vitally.testing import Receiver

from .conftest import TOKEN

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LONG_INTERVAL = "import analytics_vitally; analytics_vitally.upload_interval = 60\n"
"""Run first in every server: only the recipe's shutdown path can deliver."""


class Server:
    """A program in a subprocess with its output in a file; ``stop()`` signals it like a supervisor would."""

    def __init__(self, code: str, log: Path, env: Dict[str, str], cwd: Path, pass_fds: Sequence[int] = ()) -> None:
        self.log = log
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                pass_fds=pass_fds,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output())
            if found:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the output:\n{self.output()}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``signum`` to the main process only, and wait for it to exit."""
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            output = self.output()
            raise AssertionError(f"still running {timeout}s after signal {signum}; its output:\n{output}") from None

    def kill(self) -> None:
        """End the whole session (workers, pool processes) if anything is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


StartServer = Callable[..., Server]


@pytest.fixture
def server_env(receiver: Receiver) -> Dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("VITALLY_")}
    env.update(VITALLY_WRITE_KEY=TOKEN, VITALLY_HOST=receiver.url, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLES), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def start_server(tmp_path: Path, server_env: Dict[str, str]) -> Iterator[StartServer]:
    servers: List[Server] = []

    def start(
        code: str,
        cwd: Path = EXAMPLES,
        env: Optional[Dict[str, str]] = None,
        long_interval: bool = True,
        **options: Any,
    ) -> Server:
        code = (LONG_INTERVAL if long_interval else "") + textwrap.dedent(code)
        server = Server(code, tmp_path / f"server-{len(servers)}.log", env or server_env, cwd, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket handed to the server: requests queue in its backlog until the app is up."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=128)
    sock.set_inheritable(True)
    yield sock
    sock.close()


def request(url: str, method: str = "GET") -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as response:
        return json.loads(response.read())


def requests_in_parallel(urls: List[str], method: str = "GET") -> List[Any]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda url: request(url, method), urls))


def assert_delivered_once(receiver: Receiver, message_ids: List[str]) -> None:
    assert receiver.wait_for(len(message_ids), timeout=10), f"{len(receiver.messages)} of {len(message_ids)} arrived"
    arrived = receiver.message_ids()
    assert sorted(arrived) == sorted(message_ids), (len(arrived), len(set(arrived)), len(message_ids))
    assert len(set(arrived)) == len(message_ids)


# gunicorn -------------------------------------------------------------------------------


WORKER_READY_HOOK = """
import os

def post_worker_init(worker):
    os.write(1, f"worker ready {worker.pid}\\n".encode())  # one write: workers print at the same time
"""
"""A gunicorn config file: each worker says when its signal handlers are set."""


def gunicorn_options() -> List[str]:
    from gunicorn.config import KNOWN_SETTINGS

    # gunicorn 24+ opens a control socket in ~/.gunicorn by default: not in tests
    return ["--no-control-socket"] if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS) else []


@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
def test_gunicorn_workers_deliver_every_request_at_sigterm(
    start_server: StartServer, listener: socket.socket, receiver: Receiver, preload: bool, tmp_path: Path
) -> None:
    pytest.importorskip("gunicorn")
    # Each worker says when its signal handlers are set: gunicorn (27) sends SIGTERM to its workers
    # once, and a worker still booting would miss it and keep the master waiting graceful_timeout.
    ready = tmp_path / "gunicorn_ready.py"
    ready.write_text(WORKER_READY_HOOK)
    argv = ["gunicorn", "--workers", "2", "--bind", f"fd://{listener.fileno()}", "--config", str(ready)]
    argv += [*gunicorn_options(), *(["--preload"] if preload else [])]
    server = start_server(
        f"""
        import sys
        from gunicorn.app.wsgiapp import run
        sys.argv = {[*argv, "wsgi_app:application"]!r}
        run()
        """,
        pass_fds=[listener.fileno()],
    )
    port = listener.getsockname()[1]
    answers = requests_in_parallel([f"http://127.0.0.1:{port}/user-{n}" for n in range(40)])
    server.wait_for_output(r"(worker ready \d+[\s\S]*){2}")
    assert server.stop(signal.SIGTERM) == 0, server.output()
    assert all(answer["queued"] for answer in answers)
    assert_delivered_once(receiver, [answer["messageId"] for answer in answers])
    print(
        f"gunicorn preload={preload}: 40 sent, {len(receiver.messages)} delivered, "
        f"{len({answer['worker'] for answer in answers})} workers served"
    )


# FastAPI under uvicorn -------------------------------------------------------------------


def test_fastapi_lifespan_configures_and_delivers_at_sigterm(
    start_server: StartServer, listener: socket.socket, receiver: Receiver
) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    server = start_server(
        f"""
        import uvicorn
        uvicorn.run("fastapi_app:app", fd={listener.fileno()}, lifespan="on", log_level="warning")
        """,
        pass_fds=[listener.fileno()],
    )
    port = listener.getsockname()[1]
    answers = requests_in_parallel([f"http://127.0.0.1:{port}/signup/user-{n}" for n in range(30)], "POST")
    # uvicorn shuts down gracefully (lifespan end included), then re-raises the signal it caught.
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM), server.output()
    assert "Traceback" not in server.output()
    assert_delivered_once(receiver, [answer["messageId"] for answer in answers])


def test_fastapi_bad_configuration_stops_the_start_up(
    start_server: StartServer, listener: socket.socket, server_env: Dict[str, str]
) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    env = {key: value for key, value in server_env.items() if key != "VITALLY_WRITE_KEY"}
    server = start_server(
        f"""
        import uvicorn
        uvicorn.run("fastapi_app:app", fd={listener.fileno()}, lifespan="on", log_level="warning")
        """,
        env=env,
        pass_fds=[listener.fileno()],
    )
    assert server.process.wait(30) != 0
    assert "ConfigurationError: write_key is not set" in server.output()


# Django ---------------------------------------------------------------------------------

DJANGO = EXAMPLES / "django_app"


def test_django_app_config_configures_and_the_exit_drain_delivers(
    start_server: StartServer, receiver: Receiver
) -> None:
    pytest.importorskip("django")
    server = start_server(
        """
        import json, os
        os.environ["DJANGO_SETTINGS_MODULE"] = "site_project.settings"
        import django
        django.setup()  # runs TrackingConfig.ready(): configure()
        from django.test import Client
        client = Client()
        answers = [client.post(f"/signup/user-{n}/").json() for n in range(25)]
        print("ANSWERS " + json.dumps(answers))
        """,
        cwd=DJANGO,
    )
    assert server.process.wait(60) == 0, server.output()
    answers = json.loads(server.wait_for_output(r"ANSWERS (.*)").group(1))
    assert_delivered_once(receiver, [answer["messageId"] for answer in answers])


def test_django_bad_configuration_fails_manage_py_at_start_up(server_env: Dict[str, str]) -> None:
    pytest.importorskip("django")
    env = {**server_env, "VITALLY_HOST": "http://vitally.example.com"}  # plain http off loopback
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=DJANGO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "ConfigurationError: host" in done.stderr


# Celery, prefork pool -------------------------------------------------------------------

CELERY_CONFIG = """
broker_url = "filesystem://"
broker_transport_options = {{
    "data_folder_in": {queue!r}, "data_folder_out": {queue!r}, "control_folder": {control!r}, "store_processed": False
}}
result_backend = "file://{results}"
broker_connection_retry_on_startup = True
worker_hijack_root_logger = False
"""


class CeleryRig:
    """A filesystem broker and result store under ``folder``: a worker's environment and a task sender."""

    def __init__(self, folder: Path, server_env: Dict[str, str]) -> None:
        celery = pytest.importorskip("celery")
        for name in ("queue", "control", "results"):
            (folder / name).mkdir()
        self.config = CELERY_CONFIG.format(**{name: str(folder / name) for name in ("queue", "control", "results")})
        (folder / "celeryconfig.py").write_text(self.config)
        self.env = {**server_env, "CELERY_CONFIG_MODULE": "celeryconfig"}
        self.env["PYTHONPATH"] = os.pathsep.join([str(folder), self.env["PYTHONPATH"]])
        self.sender = celery.Celery("sender")
        namespace: Dict[str, Any] = {}
        exec(self.config, namespace)
        self.sender.conf.update({key: value for key, value in namespace.items() if not key.startswith("__")})

    @staticmethod
    def worker_code(app: str, pool: str, concurrency: int) -> str:
        """A ``celery worker`` run in a subprocess (``start_server``'s code)."""
        argv = ["celery", "-A", app, "worker", f"--pool={pool}", f"--concurrency={concurrency}"]
        argv += ["--loglevel=WARNING", "--without-heartbeat", "--without-gossip", "--without-mingle"]
        return f"import sys\nfrom celery.__main__ import main\nsys.argv = {argv!r}\nmain()\n"


def test_celery_prefork_delivers_every_task_at_warm_shutdown(
    start_server: StartServer, tmp_path: Path, server_env: Dict[str, str], receiver: Receiver
) -> None:
    rig = CeleryRig(tmp_path, server_env)
    worker = start_server(rig.worker_code("celery_app", "prefork", 2), env=rig.env)
    sender = rig.sender
    try:
        results = [sender.send_task("celery_app.record_signup", args=[f"user-{n}", "acct-1"]) for n in range(40)]
        message_ids = [result.get(timeout=60) for result in results]
    finally:
        sender.close()
    assert worker.stop(signal.SIGTERM, timeout=60) == 0, worker.output()  # warm shutdown
    assert_delivered_once(receiver, message_ids)


# AWS Lambda-style handler ---------------------------------------------------------------


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lambda_handler_delivers_before_it_returns_or_raises(
    module_api: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module_api, "upload_interval", 60.0)
    example = load_example("lambda_handler")  # its configure() is the cold start
    signups = [{"user_id": f"user-{n}", "email": f"{n}@example.com", "account_id": "acct-1"} for n in range(5)]
    for invocation in range(3):
        assert example.handler({"signups": signups}, None)["statusCode"] == 200
        # No wait: the messages are there when the handler returns (Lambda may freeze us now).
        assert len(receiver.messages) == 10 * (invocation + 1)
    with pytest.raises(RuntimeError):
        example.handler({"signups": signups, "fail": True}, None)
    assert len(receiver.messages) == 40
    assert len(set(receiver.message_ids())) == 40


# uWSGI ----------------------------------------------------------------------------------


def uwsgi_binary() -> str:
    pytest.importorskip("pyuwsgi")
    binary = Path(sys.executable).parent / "uwsgi"
    if not binary.exists():
        pytest.skip("no uwsgi script beside this Python")
    return str(binary)


def start_uwsgi(start_server: StartServer, tmp_path: Path, options: List[str]) -> tuple[Server, int]:
    argv = [uwsgi_binary(), "--http-socket", "127.0.0.1:0", "--master", "--need-app", "--die-on-term", *options]
    server = start_server(f"import os; os.execv({argv[0]!r}, {argv!r})", long_interval=False)
    port = int(server.wait_for_output(r"bound to TCP address 127\.0\.0\.1:(\d+)").group(1))
    return server, port


@pytest.mark.parametrize("enable_threads", [False, True])
def test_uwsgi_threads_disabled_is_detected_in_a_real_uwsgi(
    start_server: StartServer, tmp_path: Path, enable_threads: bool
) -> None:
    app = tmp_path / "probe.py"
    app.write_text(
        textwrap.dedent(
            """
            import json
            from analytics_vitally.servers import uwsgi_master_without_fork_hooks, uwsgi_threads_disabled
            at_import = uwsgi_master_without_fork_hooks()  # the master loads the app, then forks

            def application(environ, start_response):
                start_response("200 OK", [("Content-Type", "application/json")])
                return [json.dumps([uwsgi_threads_disabled(), at_import]).encode()]
            """
        )
    )
    options = ["--wsgi-file", str(app), "--processes", "1"] + (["--enable-threads"] if enable_threads else [])
    _, port = start_uwsgi(start_server, tmp_path, options)
    assert request(f"http://127.0.0.1:{port}/") == [not enable_threads, True]


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(["--enable-threads", "--lazy-apps"], id="recipe"),
        pytest.param(
            ["--enable-threads"],
            id="app-loaded-in-master",
        ),
    ],
)
def test_uwsgi_workers_make_distinct_message_ids(start_server: StartServer, tmp_path: Path, options: List[str]) -> None:
    # Only the IDs handed out are checked: delivery at uWSGI 2.0's stop was not reliable enough
    # to test here (see the notes).
    app = ["--wsgi-file", str(EXAMPLES / "wsgi_app.py"), "--processes", "2", *options]
    _, port = start_uwsgi(start_server, tmp_path, app)
    answers: List[Any] = []
    while len({answer["worker"] for answer in answers}) < 2 and len(answers) < 400:  # both workers served
        answers += requests_in_parallel([f"http://127.0.0.1:{port}/user-{n}" for n in range(20)])
    assert len({answer["worker"] for answer in answers}) == 2
    ids = [answer["messageId"] for answer in answers]
    assert len(set(ids)) == len(ids)  # each worker made its own IDs: Vitally would drop repeated ones
