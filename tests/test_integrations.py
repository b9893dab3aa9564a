"""``with Client``, ``flush_after`` and the uWSGI checks, against the local receiver.

The uWSGI checks run here in fresh interpreters with a fake ``uwsgi`` module put in
``sys.modules`` (the real server is in test_recipes.py): uWSGI exposes exactly such a
module, with ``has_threads``, ``opt`` and ``worker_id()``.
"""

from __future__ import annotations

import asyncio
import socket
import textwrap
import threading
import time
from typing import Any, Iterator, List

import pytest

import analytics_vitally
from analytics_vitally import AsyncClient, Client, ConfigurationError, flush_after
from analytics_vitally.testing import Receiver

from .conftest import TOKEN, MakeClient, run_script
from .test_async import LOOP_DELAY_BOUND, measure_loop, slow


def worker_threads() -> List[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "analytics_vitally"]


@pytest.fixture
def silent_host() -> Iterator[str]:
    """A host that takes connections and never answers; closing it resets them."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


# with Client(...) ---------------------------------------------------------------------------


def test_with_block_delivers_and_stops_the_threads(receiver: Receiver) -> None:
    before = worker_threads()
    with Client(TOKEN, host=receiver.url, upload_interval=60) as client:
        ids = [client.track("32", "e", {"n": n})[1]["messageId"] for n in range(150)]
        started = [thread for thread in worker_threads() if thread not in before]
        assert started
    assert receiver.message_ids() == ids  # no waiting: the end of the block delivered them
    for thread in started:
        thread.join(timeout=5)  # each is leaving (it may still be returning from its last step)
        assert not thread.is_alive()


def test_with_block_that_raises_still_delivers(receiver: Receiver) -> None:
    with pytest.raises(KeyError), Client(TOKEN, host=receiver.url, upload_interval=60) as client:
        _, message = client.track("32", "e")
        raise KeyError("the app failed")
    assert receiver.message_ids() == [message["messageId"]]


def test_with_block_is_bounded_by_exit_timeout(silent_host: str) -> None:
    started = time.monotonic()
    with Client(TOKEN, host=silent_host, exit_timeout=0.5, timeout=30) as client:
        client.track("32", "e")
    assert time.monotonic() - started < 3


# flush_after ----------------------------------------------------------------------------


def test_flush_after_delivers_when_a_function_returns_or_raises(make_client: MakeClient, receiver: Receiver) -> None:
    client = make_client(upload_interval=60)

    @flush_after(client=client)
    def handler(n: int, fail: bool = False) -> int:
        for i in range(n):
            client.track("32", "e", {"i": i})
        if fail:
            raise ValueError("handler failed")
        return n

    assert handler(3) == 3
    assert len(receiver.messages) == 3  # no waiting: delivered before the call returned
    with pytest.raises(ValueError, match="handler failed"):
        handler(2, fail=True)
    assert len(receiver.messages) == 5
    assert handler.__name__ == "handler"


def test_flush_after_bare_uses_the_default_client(
    module_api: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module_api, "upload_interval", 60.0)

    @analytics_vitally.flush_after
    def handler() -> None:
        analytics_vitally.track("32", "e")

    handler()
    assert len(receiver.messages) == 1


def test_flush_after_is_bounded_by_its_timeout(
    make_client: MakeClient, silent_host: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(host=silent_host, timeout=30)

    @flush_after(timeout=0.5, client=client)
    def handler() -> str:
        client.track("32", "e")
        return "done"

    started = time.monotonic()
    assert handler() == "done"
    assert 0.4 <= time.monotonic() - started < 3
    assert "flush_after(timeout=0.5): messages still undelivered when" in caplog.text


@pytest.mark.parametrize("kind", ["Client", "AsyncClient", "default"])
def test_flush_after_on_a_coroutine_waits_off_the_loop(
    kind: str, module_api: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.respond = slow(0.5)
    monkeypatch.setattr(module_api, "upload_interval", 60.0)
    given: Any = {
        "Client": Client(TOKEN, host=receiver.url, upload_interval=60),
        "AsyncClient": AsyncClient(TOKEN, host=receiver.url, upload_interval=60),
        "default": None,
    }[kind]

    @flush_after(timeout=10, client=given)
    async def handle(job: int) -> int:
        if isinstance(given, AsyncClient):
            await given.track("32", "e", {"job": job})
        else:
            (given or analytics_vitally).track("32", "e", {"job": job})
        return job

    result, worst, elapsed = asyncio.run(measure_loop(handle(7)))
    assert result == 7
    assert len(receiver.messages) == 1  # delivered before the coroutine finished
    assert elapsed >= 0.4
    assert worst < LOOP_DELAY_BOUND


def test_flush_after_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        flush_after(timeout=-1)
    with pytest.raises(ConfigurationError, match="client"):
        flush_after(client="the default")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="generator"):

        @flush_after
        def generate() -> Iterator[int]:
            yield 1


# uWSGI checks ---------------------------------------------------------------------------

FAKE_UWSGI = """
    import logging, sys, types
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    uwsgi = types.ModuleType("uwsgi")
    uwsgi.opt = {opt!r}
    uwsgi.worker_id = lambda: {worker_id}
    has_threads = {has_threads!r}
    if has_threads is not None:
        uwsgi.has_threads = has_threads
    sys.modules["uwsgi"] = uwsgi
    from analytics_vitally import servers
"""


def fake_uwsgi(code: str, opt: Any = None, has_threads: Any = None, worker_id: int = 1) -> str:
    """``code`` run in a process that looks like a uWSGI one."""
    fake = FAKE_UWSGI.format(opt=opt or {}, has_threads=has_threads, worker_id=worker_id)
    return textwrap.dedent(fake) + textwrap.dedent(code)


@pytest.mark.parametrize(
    ("opt", "has_threads", "disabled"),
    [
        ({}, 0, True),
        ({}, 1, False),
        ({"enable-threads": True}, 1, False),
        ({}, None, True),  # a uWSGI without has_threads: read the options
        ({"enable-threads": True}, None, False),
        ({"enable-threads": b"true"}, None, False),
        ({"enable-threads": b"false"}, None, True),
        ({"threads": b"4"}, None, False),
        ({"threads": b"1"}, None, True),
    ],
)
def test_uwsgi_threads_disabled(opt: Any, has_threads: Any, disabled: bool) -> None:
    done = run_script(fake_uwsgi("print(servers.uwsgi_threads_disabled())", opt, has_threads))
    assert done.stdout.strip() == str(disabled), done.stderr


def test_not_under_uwsgi_nothing_is_detected() -> None:
    done = run_script(
        """
        from analytics_vitally import servers
        print(servers.uwsgi_threads_disabled(), servers.uwsgi_master_without_fork_hooks())
        """
    )
    assert done.stdout.split() == ["False", "False"], done.stderr


@pytest.mark.parametrize(
    ("opt", "worker_id", "expected"),
    [
        ({}, 0, True),
        ({}, 1, False),
        ({"lazy-apps": True}, 0, False),
        ({"py-call-osafterfork": True}, 0, False),
    ],
)
def test_uwsgi_master_without_fork_hooks(opt: Any, worker_id: int, expected: bool) -> None:
    done = run_script(fake_uwsgi("print(servers.uwsgi_master_without_fork_hooks())", opt, 1, worker_id))
    assert done.stdout.strip() == str(expected), done.stderr


def test_each_uwsgi_warning_is_logged_once_per_process() -> None:
    code = """
        for _ in range(3):
            servers.warn_if_threads_cannot_run()
    """
    done = run_script(fake_uwsgi(code, {}, 0, worker_id=0))
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith("WARNING uWSGI runs this process with Python threads disabled")
    assert "--enable-threads" in lines[0]
    assert "lazy-apps = true" in lines[1]


def test_a_client_under_uwsgi_without_threads_warns_once(receiver: Receiver) -> None:
    code = f"""
        from analytics_vitally import Client
        for _ in range(2):
            client = Client({TOKEN!r}, host={receiver.url!r})
            client.track("32", "e")
            client.shutdown(timeout=5)
        print("delivered", client.stats().sent)
    """
    done = run_script(fake_uwsgi(code, {}, 0))
    assert done.returncode == 0, done.stderr
    assert receiver.wait_for(2)
    assert done.stderr.count("uWSGI runs this process with Python threads disabled") == 1, done.stderr
