"""Segment analytics-python 2.4.0's own tests (test_client.py, test_module.py, test_init.py), ported to
``analytics_vitally.segment`` with only the import swapped: the same calls, with Segment's assertions on its
queue and consumers replaced by assertions on what arrives at a real local receiver (Vitally's messages)."""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import date, datetime
from typing import Any, Callable, Dict, Iterator, List, Set, Tuple

import pytest

import analytics_vitally.segment as analytics
from analytics_vitally.errors import AuthenticationError, ConfigurationError
from analytics_vitally.segment import Client
from analytics_vitally.settings import BATCH_PATH
from analytics_vitally.testing import Receiver, Request

from .conftest import TOKEN

WHEN = "2014-09-03T00:00:00.000Z"
"""datetime(2014, 9, 3) as Vitally takes it (Segment's client says "2014-09-03T00:00:00+00:00")."""
LOG = logging.getLogger("analytics_vitally")
Gated = Tuple[Receiver, threading.Event, threading.Event]


def arrived(receiver: Receiver) -> List[Dict[str, Any]]:
    """The messages the receiver accepted, without their generated messageId and timestamp."""
    return [{k: v for k, v in m.items() if k not in ("messageId", "timestamp")} for m in receiver.messages]


def worker_threads() -> Set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == "analytics_vitally"}


class Failures(List[Tuple[Exception, Any]]):
    """Segment's ``fail`` handler: records each ``on_error(e, batch)``."""

    def fail(self, e: Exception, batch: Any = None) -> None:
        self.append((e, batch))


@pytest.fixture
def failed() -> Failures:
    return Failures()


@pytest.fixture
def made() -> Iterator[Callable[[Client], Client]]:
    """``made(Client(...))``: the client, shut down (bounded) at the end of the test."""
    clients: List[Client] = []

    def keep(client: Client) -> Client:
        clients.append(client)
        return client

    yield keep
    for client in clients:
        client.shutdown(timeout=5)


@pytest.fixture
def client(receiver: Receiver, failed: Failures, made: Callable[[Client], Client]) -> Client:
    """Segment's setUp: ``Client("testsecret", on_error=self.fail)``, here pointed at the receiver."""
    return made(Client(TOKEN, receiver.url, on_error=failed.fail))


@pytest.fixture
def gated() -> Iterator[Gated]:
    """A receiver holding every batch unanswered until ``gate`` is set; an event set at the first; the gate."""
    arrived_, gate = threading.Event(), threading.Event()

    def hold(request: Request) -> None:
        arrived_.set()
        gate.wait(30)

    with Receiver(TOKEN, respond=hold) as receiver:
        yield receiver, arrived_, gate
        gate.set()


@pytest.fixture
def log_level() -> Iterator[None]:
    """Put the library logger's level and handlers back after a test that turns debug on."""
    level, handlers = LOG.level, list(LOG.handlers)
    yield
    LOG.setLevel(level)
    LOG.handlers[:] = handlers


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No write key, subdomain, host or proxy exemption from the environment."""
    for name in ("VITALLY_WRITE_KEY", "VITALLY_SUBDOMAIN", "VITALLY_HOST", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


# --- segment/analytics/test/test_client.py ------------------------------------------------------------------


def assert_advanced(msg: Dict[str, Any], kind: str) -> None:
    """The returned fields Segment's advanced tests assert that hold here (the timestamp in Vitally's UTC form)."""
    assert (msg["type"], msg["userId"], msg["anonymousId"]) == (kind, "userId", "anonymousId")
    assert msg["messageId"] == "messageId"
    assert [msg["timestamp"], msg["integrations"], msg["context"]["ip"]] == [WHEN, {"Amplitude": True}, "192.168.0.1"]


class TestClient:
    def test_requires_write_key(self, receiver: Receiver) -> None:
        """Segment: Client() raises AssertionError. Ours: ConfigurationError naming write_key, with or without host."""
        with pytest.raises(ConfigurationError, match="write_key"):
            Client()
        with pytest.raises(ConfigurationError, match="write_key"):
            Client(host=receiver.url)

    def test_empty_flush(self, client: Client, receiver: Receiver) -> None:
        """Segment: flush() with nothing queued returns. Ours: it returns True and no request is made."""
        assert client.flush() is True
        assert receiver.requests == []

    def test_basic_track(self, client: Client, receiver: Receiver, failed: Failures) -> None:
        """Segment: the returned track's fields. Ours: those, and the same track arrives."""
        success, msg = client.track("userId", "python test event")
        client.flush()
        assert success and not failed
        assert (msg["type"], msg["userId"], msg["event"]) == ("track", "userId", "python test event")
        assert msg["properties"] == {}
        assert isinstance(msg["messageId"], str) and isinstance(msg["timestamp"], str) and msg["timestamp"][-1] == "Z"
        assert receiver.messages == [
            {"type": "track", "userId": "userId", "event": "python test event", "properties": {},
             "messageId": msg["messageId"], "timestamp": msg["timestamp"]},
        ]  # fmt: skip

    def test_stringifies_user_id(self, client: Client, receiver: Receiver, failed: Failures) -> None:
        """Segment: a big int user_id is returned as its string. Ours: it also arrives as that string."""
        success, msg = client.track(user_id=157963456373623802, event="python test event")
        client.flush()
        assert success and not failed
        assert (msg["userId"], msg["anonymousId"]) == ("157963456373623802", None)
        assert [m["userId"] for m in receiver.messages] == ["157963456373623802"]

    def test_stringifies_anonymous_id(
        self, client: Client, receiver: Receiver, failed: Failures, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Segment: an anonymous-only track is returned with its id as a string. Ours: nothing sent; one warning."""
        caplog.set_level(logging.WARNING, logger="analytics_vitally")
        success, msg = client.track(anonymous_id=157963456373623803, event="python test event")
        again, _ = client.track(anonymous_id=157963456373623803, event="python test event")
        client.flush()
        assert success and again and not failed
        assert msg["userId"] is None
        assert receiver.messages == [] and receiver.requests == []
        said = [r for r in caplog.records if r.name == "analytics_vitally" and "anonymous_id" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.WARNING

    def test_stringifies_anonymous_id_returned(self, client: Client) -> None:
        """Segment: msg["anonymousId"] == "157963456373623803". Ours: the same is expected of the returned message."""
        _, msg = client.track(anonymous_id=157963456373623803, event="python test event")
        assert msg["anonymousId"] == "157963456373623803"

    def test_advanced_track(self, client: Client, receiver: Receiver) -> None:
        """Segment: all 8 positional arguments show in the returned track. Ours: that, and it arrives with them."""
        success, msg = client.track("userId", "python test event", {"property": "value"}, {"ip": "192.168.0.1"},
                                    datetime(2014, 9, 3), "anonymousId", {"Amplitude": True}, "messageId")  # fmt: skip
        assert success
        assert_advanced(msg, "track")
        assert (msg["event"], msg["properties"]) == ("python test event", {"property": "value"})
        client.flush()
        assert receiver.messages == [
            {"type": "track", "userId": "userId", "event": "python test event", "properties": {"property": "value"},
             "messageId": "messageId", "timestamp": WHEN},
        ]  # fmt: skip

    def test_basic_identify(self, client: Client, receiver: Receiver, failed: Failures) -> None:
        """Segment: the returned identify. Ours, in Segment's order (identify, group): the user arrives with traits."""
        success, msg = client.identify("userId", {"trait": "value"})
        client.group("userId", "groupId")
        client.flush()
        assert success and not failed
        assert (msg["type"], msg["userId"], msg["traits"]) == ("identify", "userId", {"trait": "value"})
        assert arrived(receiver) == [
            {"type": "account", "accountId": "groupId", "traits": {}},
            {"type": "user", "userId": "userId", "accountId": "groupId", "traits": {"trait": "value"}},
        ]

    def test_basic_identify_held(self, client: Client, receiver: Receiver) -> None:
        """Segment: a bare identify is sent. Ours: with no account known nothing arrives, until group() sends it."""
        assert client.identify("userId", {"trait": "value"})[0]
        assert client.flush() is True and receiver.messages == []
        client.group("userId", "groupId", {"name": "Acme"})
        client.flush()
        assert arrived(receiver) == [
            {"type": "account", "accountId": "groupId", "traits": {"name": "Acme"}},
            {"type": "user", "userId": "userId", "accountId": "groupId", "traits": {"trait": "value"}},
        ]

    def test_basic_identify_returned_ids(self, client: Client) -> None:
        """Segment: msg["timestamp"] and msg["messageId"] are strings. Ours: the same is expected of a held identify."""
        _, msg = client.identify("userId", {"trait": "value"})
        client.group("userId", "groupId")
        assert isinstance(msg["timestamp"], str) and isinstance(msg["messageId"], str)

    def test_advanced_identify(self, client: Client, receiver: Receiver) -> None:
        """Segment: the 7 positional arguments show in the return. Ours (account in context): it arrives with them."""
        success, msg = client.identify(
            "userId", {"trait": "value"}, {"ip": "192.168.0.1", "groupId": "groupId"}, datetime(2014, 9, 3),
            "anonymousId", {"Amplitude": True}, "messageId",
        )  # fmt: skip
        assert success
        assert_advanced(msg, "identify")
        assert msg["traits"] == {"trait": "value"}
        client.flush()
        assert receiver.messages == [
            {"type": "user", "userId": "userId", "accountId": "groupId", "traits": {"trait": "value"},
             "messageId": "messageId", "timestamp": WHEN},
        ]  # fmt: skip

    def test_basic_group(self, client: Client, receiver: Receiver, failed: Failures) -> None:
        """Segment: the returned group. Ours: that, and an account and a user linked to it arrive."""
        success, msg = client.group("userId", "groupId")
        client.flush()
        assert success and not failed
        assert (msg["type"], msg["userId"], msg["groupId"]) == ("group", "userId", "groupId")
        assert arrived(receiver) == [
            {"type": "account", "accountId": "groupId", "traits": {}},
            {"type": "user", "userId": "userId", "accountId": "groupId", "traits": {}},
        ]

    def test_advanced_group(self, client: Client, receiver: Receiver) -> None:
        """Segment: the 8 positional arguments show in the return. Ours: account+user arrive, ids derived, stable."""
        success, msg = client.group("userId", "groupId", {"trait": "value"}, {"ip": "192.168.0.1"},
                                    datetime(2014, 9, 3), "anonymousId", {"Amplitude": True}, "messageId")  # fmt: skip
        assert success
        assert_advanced(msg, "group")
        assert msg["traits"] == {"trait": "value"}
        client.flush()
        account, user = receiver.messages
        pair = [account["messageId"], user["messageId"]]
        assert account == {"type": "account", "accountId": "groupId", "traits": {"trait": "value"},
                           "messageId": pair[0], "timestamp": WHEN}  # fmt: skip
        assert user == {"type": "user", "userId": "userId", "accountId": "groupId", "traits": {},
                        "messageId": pair[1], "timestamp": WHEN}  # fmt: skip
        assert len(set(pair)) == 2 and "messageId" not in pair and all(uuid.UUID(one) for one in pair)
        client.group("userId", "groupId", {"trait": "value"}, {"ip": "192.168.0.1"},
                     datetime(2014, 9, 3), "anonymousId", {"Amplitude": True}, "messageId")  # fmt: skip
        client.group("userId", "groupId", message_id="another")
        client.flush()
        assert receiver.message_ids()[2:4] == pair
        assert not set(receiver.message_ids()[4:]) & set(pair)

    def test_basic_alias(
        self, client: Client, receiver: Receiver, failed: Failures, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Segment: the returned alias. Ours: that, and nothing is sent (one warning)."""
        caplog.set_level(logging.WARNING, logger="analytics_vitally")
        success, msg = client.alias("previousId", "userId")
        client.flush()
        assert success and not failed
        assert (msg["previousId"], msg["userId"]) == ("previousId", "userId")
        assert receiver.requests == []
        assert sum("alias()" in r.getMessage() for r in caplog.records) == 1

    @pytest.mark.parametrize("kind", ["page", "screen"])
    def test_basic_page(self, client: Client, receiver: Receiver, failed: Failures, kind: str) -> None:
        """Segment: the returned page/screen (test_basic_screen). Ours: "Viewed name Page/Screen" arrives."""
        success, msg = getattr(client, kind)("userId", name="name")
        client.flush()
        assert success and not failed
        assert (msg["type"], msg["userId"], msg["name"]) == (kind, "userId", "name")
        event = f"Viewed name {kind.title()}"
        assert arrived(receiver) == [
            {"type": "track", "userId": "userId", "event": event, "properties": {"name": "name"}}
        ]

    @pytest.mark.parametrize("kind", ["page", "screen"])
    def test_advanced_page(self, client: Client, receiver: Receiver, kind: str) -> None:
        """Segment: the 9 positional arguments show (also test_advanced_screen). Ours: they arrive as a track."""
        call = getattr(client, kind)
        success, msg = call("userId", "category", "name", {"property": "value"}, {"ip": "192.168.0.1"},
                            datetime(2014, 9, 3), "anonymousId", {"Amplitude": True}, "messageId")  # fmt: skip
        assert success
        assert_advanced(msg, kind)
        assert (msg["category"], msg["name"]) == ("category", "name")
        client.flush()
        assert receiver.messages == [
            {"type": "track", "userId": "userId", "event": f"Viewed category name {kind.title()}",
             "properties": {"name": "name", "category": "category", "property": "value"},
             "messageId": "messageId", "timestamp": WHEN},
        ]  # fmt: skip

    @pytest.mark.parametrize("kind", ["page", "screen"])
    def test_advanced_page_returned_properties(self, client: Client, kind: str) -> None:
        """Segment: msg["properties"] == {"property": "value"} (name, category top-level). Ours: the same expected."""
        _, msg = getattr(client, kind)("userId", "category", "name", {"property": "value"})
        assert msg["properties"] == {"property": "value"}

    def test_flush(self, client: Client, receiver: Receiver) -> None:
        """Segment: after 1000 identifies flush() empties the queue. Ours (the account known): all arrive."""
        client.group("userId", "groupId")
        ids = [client.identify("userId", {"trait": "value"})[1]["messageId"] for _ in range(1000)]
        assert client.flush() is True
        assert client.client.stats().queue_depth == 0
        assert receiver.message_ids()[2:] == ids

    def test_shutdown(self, client: Client, receiver: Receiver) -> None:
        """Segment: after shutdown() the queue is empty and the consumers stopped. Ours: all arrived, threads ended."""
        before = worker_threads()
        client.group("userId", "groupId")
        for _ in range(1000):
            client.identify("userId", {"trait": "value"})
        started = worker_threads() - before
        assert client.shutdown(timeout=10) is True
        assert len(receiver.messages) == 1002 and client.client.stats().queue_depth == 0
        assert started and not any(thread.is_alive() for thread in started)

    def test_synchronous(self, receiver: Receiver, made: Callable[[Client], Client]) -> None:
        """Segment: sync_mode has no consumers, an empty queue. Ours: each call delivers before returning."""
        before = worker_threads()
        client = made(Client(TOKEN, receiver.url, sync_mode=True))
        client.group("userId", "groupId")
        assert len(receiver.messages) == 2
        assert client.identify("userId")[0]
        assert arrived(receiver)[2:] == [{"type": "user", "userId": "userId", "accountId": "groupId", "traits": {}}]
        assert not worker_threads() - before

    def test_overflow(self, gated: Gated) -> None:
        """Segment: max_queue_size=1, joined: the 11th identify is refused. Ours: same, the receiver silent."""
        receiver, _, gate = gated
        client = Client(TOKEN, receiver.url, max_queue_size=1)
        try:
            client.join()
            for _ in range(10):
                client.identify("userId", context={"groupId": "groupId"})
            success, _ = client.identify("userId", context={"groupId": "groupId"})
            assert not success
        finally:
            gate.set()
            assert client.shutdown(timeout=5)
        assert 1 <= len(receiver.messages) <= 2

    def test_success_on_invalid_write_key(
        self, receiver: Receiver, failed: Failures, made: Callable[..., Client]
    ) -> None:
        """Segment: a bad key calls no on_error (any key works there). Ours, as documented: a 401 goes to on_error."""
        client = made(Client("bad_key", receiver.url, on_error=failed.fail))
        assert client.track("userId", "event")[0]
        client.flush()
        assert receiver.messages == []
        assert [request.headers["authorization"] for request in receiver.requests] == ["Basic bad_key"]
        [(error, batch)] = failed
        assert isinstance(error, AuthenticationError) and "401" in str(error)
        assert [m["event"] for m in batch] == ["event"]

    def test_unicode(self, receiver: Receiver, made: Callable[[Client], Client]) -> None:
        """Segment: Client("unicode_key") constructs. Ours: the same, pointed at the receiver."""
        assert made(Client("unicode_key", receiver.url)).write_key == "unicode_key"

    def test_numeric_user_id(self, client: Client, receiver: Receiver, failed: Failures) -> None:
        """Segment: track(1234, ...) fails nothing. Ours: it arrives with userId "1234"."""
        client.track(1234, "python event")
        client.flush()
        assert not failed
        assert arrived(receiver) == [{"type": "track", "userId": "1234", "event": "python event", "properties": {}}]

    @pytest.mark.usefixtures("log_level")
    def test_debug(self, client: Client, receiver: Receiver, made: Callable[[Client], Client]) -> None:
        """Segment: Client(..., debug=True), then client.log.setLevel(0). Ours: debug logs at DEBUG; setLevel works."""
        debugging = made(Client("bad_key", receiver.url, debug=True))
        assert debugging.debug is True and debugging.log is LOG and LOG.level == logging.DEBUG
        client.log.setLevel(0)
        assert LOG.level == logging.NOTSET

    def test_identify_with_date_object(self, client: Client, receiver: Receiver, failed: Failures) -> None:
        """Segment: a date trait is returned as given. Ours (the account in context): it arrives as "1981-02-02"."""
        success, msg = client.identify("userId", {"birthdate": date(1981, 2, 2)}, {"groupId": "groupId"})
        client.flush()
        assert success and not failed
        assert msg["traits"] == {"birthdate": date(1981, 2, 2)}
        assert arrived(receiver) == [
            {"type": "user", "userId": "userId", "accountId": "groupId", "traits": {"birthdate": "1981-02-02"}}
        ]

    def test_gzip(self, receiver: Receiver, failed: Failures, made: Callable[[Client], Client]) -> None:
        """Segment: gzip=True with 10 identifies fails nothing. Ours: all arrive, in gzipped requests."""
        client = made(Client(TOKEN, receiver.url, on_error=failed.fail, gzip=True))
        client.group("userId", "groupId")
        for _ in range(10):
            client.identify("userId", {"trait": "value"})
        client.flush()
        assert not failed and len(receiver.messages) == 12
        assert all(request.headers.get("content-encoding") == "gzip" for request in receiver.requests)

    def test_user_defined_upload_size(self, receiver: Receiver, failed: Failures, made: Callable[..., Client]) -> None:
        """Segment: upload_size=10 posts 20 identifies as 2 batches of 10. Ours: all arrive, no request over 10."""
        client = made(Client(TOKEN, receiver.url, on_error=failed.fail, upload_size=10, upload_interval=3))
        for _ in range(20):
            client.identify("userId", {"trait": "value"}, {"groupId": "groupId"})
        client.flush()
        assert not failed and len(receiver.messages) == 20
        sizes = [len(request.messages or []) for request in receiver.requests]
        assert len(sizes) >= 2 and max(sizes) <= 10 and sum(sizes) == 20

    def test_user_defined_timeout(self, receiver: Receiver, made: Callable[[Client], Client]) -> None:
        """Segment: timeout=10 reaches the consumers. Ours: client.timeout reads 10."""
        assert made(Client(TOKEN, receiver.url, timeout=10)).timeout == 10

    def test_default_timeout_15(self, receiver: Receiver, made: Callable[[Client], Client]) -> None:
        """Segment: the default timeout is 15 s. Ours: Vitally's client default, 10 s (a known difference)."""
        assert made(Client(TOKEN, receiver.url)).timeout == 10

    def test_proxies(self, made: Callable[[Client], Client]) -> None:
        """Segment: the proxies dict reaches requests' post. Ours: a loopback proxy gets the batch, in proxy form."""

        def forward(request: Request) -> Any:
            return proxy.answer(request) if request.path.endswith(BATCH_PATH) else None

        with Receiver(TOKEN, respond=forward) as proxy:
            client = made(Client(TOKEN, "http://127.0.0.1:9", proxies={"http": proxy.url, "https": proxy.url}))
            success, _ = client.identify("userId", {"trait": "value"}, {"groupId": "groupId"})
            client.flush()
            assert success
            assert [request.path for request in proxy.requests] == [f"http://127.0.0.1:9{BATCH_PATH}"]
            assert arrived(proxy) == [
                {"type": "user", "userId": "userId", "accountId": "groupId", "traits": {"trait": "value"}}
            ]
            client.shutdown(timeout=5)

    def test_queue_full_returns_false(self, gated: Gated) -> None:
        """Segment: with max_queue_size=1 full, track returns (False, msg). Ours: same, the receiver silent."""
        receiver, first, gate = gated
        client = Client(TOKEN, receiver.url, max_queue_size=1)
        try:
            client.join()
            assert client.track("user-1", "First Event")[0]
            assert first.wait(10)  # its batch is in flight, unanswered
            assert client.track("user-1", "Queued Event")[0]  # the queue's one place
            success, msg = client.track("user-2", "Overflow Event")
            assert not success and msg["event"] == "Overflow Event"
        finally:
            gate.set()
            assert client.shutdown(timeout=5)
        assert [m["event"] for m in receiver.messages] == ["First Event", "Queued Event"]

    def test_queue_full_does_not_raise(self, gated: Gated) -> None:
        """Segment: track never raises on a full queue. Ours: the same, call after call, while nothing answers."""
        receiver, first, gate = gated
        client = Client(TOKEN, receiver.url, max_queue_size=1)
        try:
            client.join()
            client.track("user-1", "First Event")
            assert first.wait(10)
            client.track("user-1", "Queued Event")
            assert [client.track("user-2", "Overflow Event")[0] for _ in range(5)] == [False] * 5
        finally:
            gate.set()
            assert client.shutdown(timeout=5)


# --- segment/analytics/test/test_module.py ------------------------------------------------------------------


class TestModule:
    @pytest.fixture(autouse=True)
    def set_up(self, segment_api: Any, failed: Failures) -> None:
        """Segment's setUp: a write key and an on_error (Segment passes a bool; ours records failures)."""
        analytics.write_key = TOKEN
        analytics.on_error = failed.fail

    def test_no_write_key(self) -> None:
        """Segment: no write key -> track raises. Ours: ConfigurationError."""
        analytics.write_key = None
        with pytest.raises(ConfigurationError, match="write_key"):
            analytics.track()
        with pytest.raises(ConfigurationError, match="write_key"):
            analytics.track("userId", "python module event")

    def test_no_host(self) -> None:
        """Segment: no host -> track raises. Ours (no subdomain either): ConfigurationError."""
        analytics.host = None
        with pytest.raises(ConfigurationError, match="subdomain"):
            analytics.track("userId", "python module event")

    def test_track(self, receiver: Receiver, failed: Failures) -> None:
        """Segment: a module track and flush. Ours: the track arrives."""
        analytics.track("userId", "python module event")
        analytics.flush()
        assert not failed
        assert arrived(receiver) == [
            {"type": "track", "userId": "userId", "event": "python module event", "properties": {}}
        ]

    def test_identify(self, receiver: Receiver) -> None:
        """Segment: a module identify and flush. Ours (then group(), Segment's order): the user arrives."""
        analytics.identify("userId", {"email": "user@email.com"})
        analytics.flush()
        assert receiver.messages == []
        analytics.group("userId", "groupId")
        analytics.flush()
        assert arrived(receiver)[1] == {
            "type": "user", "userId": "userId", "accountId": "groupId", "traits": {"email": "user@email.com"}
        }  # fmt: skip

    def test_group(self, receiver: Receiver) -> None:
        """Segment: a module group and flush. Ours: the account and the user's link arrive."""
        analytics.group("userId", "groupId")
        analytics.flush()
        assert [(m["type"], m["accountId"]) for m in receiver.messages] == [("account", "groupId"), ("user", "groupId")]

    def test_alias(self, receiver: Receiver) -> None:
        """Segment: a module alias and flush. Ours: accepted, nothing sent."""
        assert analytics.alias("previousId", "userId")[0]
        analytics.flush()
        assert receiver.requests == []

    @pytest.mark.parametrize("kind", ["page", "screen"])
    def test_page(self, receiver: Receiver, kind: str) -> None:
        """Segment: a module page (test_page) or screen (test_screen) of a user. Ours: "Loaded a Page" arrives."""
        getattr(analytics, kind)("userId")
        analytics.flush()
        assert [m["event"] for m in receiver.messages] == [f"Loaded a {kind.title()}"]

    def test_flush(self, receiver: Receiver) -> None:
        """Segment: a module flush with nothing queued. Ours: True, no request."""
        assert analytics.flush() is True
        assert receiver.requests == []

    def test_set_up_on_error_false(self, receiver: Receiver) -> None:
        """Segment's setUp sets analytics.on_error = self.failed, which is False. Ours: a track should still arrive."""
        analytics.on_error = False
        analytics.track("userId", "python module event")
        analytics.flush()
        assert len(receiver.messages) == 1


# --- segment/analytics/test/test_init.py --------------------------------------------------------------------


def toggled(name: str) -> Tuple[Client, Client]:
    """Segment's steps: ``analytics.<name> = True``, flush(); default_client = None; False, flush(). The 2 clients."""
    assert analytics.default_client is None
    setattr(analytics, name, True)
    analytics.flush()
    first = analytics.default_client
    analytics.default_client = None
    setattr(analytics, name, False)
    analytics.flush()
    assert first is not None and analytics.default_client not in (None, first)
    first.shutdown(timeout=5)
    return first, analytics.default_client


class TestInit:
    @pytest.fixture(autouse=True)
    def set_up(self, segment_api: Any) -> None:
        """Segment's setUp (after the fixture's)."""
        analytics.write_key = "test-init"
        analytics.default_client = None

    def test_writeKey(self) -> None:
        """Segment: flush() makes the default client with the write key. Ours: the same."""
        assert analytics.default_client is None
        analytics.flush()
        assert analytics.default_client.write_key == "test-init"

    @pytest.mark.usefixtures("log_level")
    def test_debug(self) -> None:
        """Segment: debug on, then a fresh default client with it off. Ours: the same, and log.setLevel(0)."""
        first, second = toggled("debug")
        assert first.debug is True and second.debug is False and LOG.level == logging.DEBUG
        analytics.default_client.log.setLevel(0)
        assert LOG.level == logging.NOTSET

    def test_gzip(self) -> None:
        """Segment: gzip reaches each fresh default client (as test_debug does). Ours: the same."""
        first, second = toggled("gzip")
        assert first.gzip is True and second.gzip is False

    def test_host(self) -> None:
        """Segment: host "http://test-host" reaches the client. Ours: https does; plain http is refused."""
        assert analytics.default_client is None
        analytics.host = "https://test-host"
        analytics.flush()
        assert analytics.default_client.host == "https://test-host"
        with pytest.warns(RuntimeWarning, match="host"):
            analytics.host = None
        made = analytics.default_client
        analytics.default_client = None
        made.shutdown(timeout=5)
        analytics.host = "http://test-host"
        with pytest.raises(ConfigurationError, match="https"):
            analytics.flush()
        assert analytics.default_client is None

    def test_max_queue_size(self) -> None:
        """Segment: max_queue_size reaches the queue. Ours: the default client's max_queue_size."""
        assert analytics.default_client is None
        analytics.max_queue_size = 1337
        analytics.flush()
        assert analytics.default_client.max_queue_size == 1337

    def test_max_retries(self, receiver: Receiver, made: Callable[[Client], Client]) -> None:
        """Segment: Client(..., max_retries=42) reaches the consumers. Ours: client.max_retries."""
        assert analytics.default_client is None
        assert made(Client("testsecret", receiver.url, max_retries=42)).max_retries == 42

    def test_sync_mode(self) -> None:
        """Segment: sync_mode reaches each fresh default client (as test_debug does). Ours: the same."""
        first, second = toggled("sync_mode")
        assert first.sync_mode is True and second.sync_mode is False

    def test_timeout(self) -> None:
        """Segment: timeout reaches the default client. Ours: the same."""
        assert analytics.default_client is None
        analytics.timeout = 1.234
        analytics.flush()
        assert analytics.default_client.timeout == 1.234
