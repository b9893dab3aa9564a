"""Settings are checked when a client is made: a bad value raises ConfigurationError naming it,
and nothing a caller passes can send the write key somewhere else or show it."""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
from typing import Any, Iterator, List

import pytest

import analytics_vitally
from analytics_vitally import Client, ConfigurationError
from analytics_vitally.testing import Receiver

from .conftest import TOKEN, MakeClient

SECRET = "SECRET-key-4b1d"


@pytest.fixture
def listener() -> Iterator[List[bytes]]:
    """A plain TCP server on 127.0.0.1:<port> recording the first bytes of each connection."""
    received: List[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(1)
                with contextlib.suppress(OSError):
                    received.append(connection.recv(65536))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    received.append(str(server.getsockname()[1]).encode())  # first entry: the port
    yield received
    stop.set()
    thread.join(2)
    server.close()


def test_a_backslash_host_cannot_send_the_key_elsewhere(listener: List[bytes]) -> None:
    # urllib.parse sees localhost here, but requests connects to the address before the backslash.
    port = int(listener[0])
    with pytest.raises(ConfigurationError) as raised:
        client = Client(SECRET, host=f"http://127.0.0.2:{port}\\@localhost", exit_timeout=1)
        client.track("u", "e")
        client.flush(timeout=2)
    assert raised.value.setting == "host"
    assert not any(SECRET.encode() in data for data in listener[1:])


@pytest.mark.parametrize(
    "host",
    [
        "http://127.0.0.2:8080\\@localhost",
        "http://localhost\\@example.com",
        "https://example.com /x",
        "https://exa\tmple.com",
        "https://example.com\r\nX: y",
        "https://example.com\x00",
        "http://user:pw@localhost:8080",
        "https://user@example.com",
        "http://example.com%2523@localhost",
        "http://127.0.0.1:99999",
        "http://localhost:0",
        "http://localhost#@example.com",
        "http://localhost?@example.com",
        "//localhost:80",
    ],
)
def test_hosts_that_hide_where_they_connect_are_refused(host: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Client(SECRET, host=host)
    assert raised.value.setting == "host"


def test_a_password_in_host_is_not_shown() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Client("k", host="http://admin:hunter2@localhost:8080")
    assert "hunter2" not in str(raised.value)
    assert "***@localhost:8080" in str(raised.value)


@pytest.mark.parametrize(
    "key, where",
    [
        (SECRET + "\r\nX-Injected: 1", 15),
        ("SECRET\nkey", 6),
        ("SECRET\x00key", 6),
        ("SECRET\u20ackey", 6),
        ("SECRETékey", 6),
    ],
)
def test_a_write_key_that_cannot_be_a_header_is_refused_without_showing_it(key: str, where: int) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Client(key, subdomain="acme")
    assert raised.value.setting == "write_key"
    assert f"position {where}" in str(raised.value)
    assert "SECRET" not in str(raised.value)


def test_whitespace_around_the_write_key_is_stripped(make_client: MakeClient, receiver: Receiver) -> None:
    client = make_client(write_key=f"  {TOKEN}\n")  # as pasted from a file: VITALLY_WRITE_KEY=$'key\n'
    client.track("u", "e")
    assert client.flush(timeout=10)
    assert len(receiver.messages) == 1  # the receiver takes only "Basic test-token"
    assert client.settings.write_key == TOKEN


def test_a_key_of_whitespace_only_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITALLY_WRITE_KEY", " \n")
    with pytest.raises(ConfigurationError, match="write_key is not set"):
        Client(subdomain="acme")


@pytest.mark.parametrize(
    "settings, name",
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": math.nan}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"max_retry_time": math.nan}, "max_retry_time"),
        ({"upload_interval": math.inf}, "upload_interval"),
        ({"upload_interval": 1e300}, "upload_interval"),
        ({"retry_wait": -0.1}, "retry_wait"),
        ({"exit_timeout": math.nan}, "exit_timeout"),
        ({"max_queue_size": "10"}, "max_queue_size"),
        ({"max_queue_size": 10.0}, "max_queue_size"),
        ({"upload_size": True}, "upload_size"),
        ({"thread": 100_000}, "thread"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout": "10"}, "timeout"),
        ({"host": 123}, "host"),
        ({"subdomain": 123}, "subdomain"),
        ({"debug": "yes"}, "debug"),
        ({"send": 0}, "send"),
        ({"gzip": None}, "gzip"),
        ({"on_error": "print"}, "on_error"),
        ({"log_handler": "stderr"}, "log_handler"),
        ({"proxies": "http://proxy"}, "proxies"),
        ({"proxies": {"https": 8080}}, "proxies"),
    ],
)
def test_each_bad_setting_is_named(settings: Any, name: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Client("k", **{"subdomain": "acme", **settings})
    assert raised.value.setting == name


def test_a_write_key_of_the_wrong_type_is_named() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Client(b"key", subdomain="acme")  # type: ignore[arg-type]
    assert raised.value.setting == "write_key"


def test_the_full_batch_url_as_host_is_understood(make_client: MakeClient, receiver: Receiver) -> None:
    client = make_client(host=receiver.url + "/analytics/v1/batch/")
    assert client.settings.url == receiver.url + "/analytics/v1/batch"
    client.track("u", "e")
    assert client.flush(timeout=10)
    assert len(receiver.messages) == 1
    assert [request.path for request in receiver.requests] == ["/analytics/v1/batch"]


def test_integers_and_durations_at_their_bounds_are_accepted() -> None:
    client = Client("k", subdomain="acme", timeout=0.001, upload_interval=0, thread=64, max_retries=0, send=False)
    assert client.settings.thread == 64


def test_configure_fails_at_start_up_and_keeps_the_old_settings(receiver: Receiver, module_api: Any) -> None:
    with pytest.raises(ConfigurationError) as raised:
        analytics_vitally.configure(host="http://example.com")
    assert raised.value.setting == "host"
    assert analytics_vitally.host == receiver.url  # nothing changed
    client = analytics_vitally.configure(upload_size=7)
    assert analytics_vitally.default_client() is client
    assert client.settings.upload_size == 7 and analytics_vitally.upload_size == 7
    analytics_vitally.track("u", "e")
    assert analytics_vitally.flush(timeout=10)
    assert len(receiver.messages) == 1


def test_configure_replaces_the_default_client_delivering_what_it_held(receiver: Receiver, module_api: Any) -> None:
    first = analytics_vitally.configure(upload_interval=60)
    analytics_vitally.track("u", "before")
    second = analytics_vitally.configure(upload_interval=60)
    assert second is not first
    assert [m["event"] for m in receiver.messages] == ["before"]  # the old client was shut down
    with pytest.raises(TypeError, match="no_such"):
        analytics_vitally.configure(no_such=1)


def test_configure_without_a_key_names_it(module_api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VITALLY_WRITE_KEY", raising=False)
    module_api.write_key = None
    with pytest.raises(ConfigurationError) as raised:
        analytics_vitally.configure()
    assert raised.value.setting == "write_key"


def test_no_settings_error_shows_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="analytics_vitally")
    shown: List[str] = []
    for settings in ({"host": "http://u:p@localhost"}, {"timeout": -1}, {"subdomain": "a.b"}, {"host": 5}):
        with pytest.raises(ConfigurationError) as raised:
            Client(SECRET, **settings)
        shown += [str(raised.value), repr(raised.value)]
    assert shown and not any(SECRET in text for text in [*shown, caplog.text])


def test_a_proxy_password_is_not_shown() -> None:
    client = Client("k", subdomain="acme", proxies={"https": "http://user:hunter2@127.0.0.1:3128"})
    assert not any("hunter2" in text for text in (repr(client), str(client), repr(client.settings)))
