"""before_send, the request context, typos and late settings, and the module as the shell shows it:
each checked against what reached a real receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import pydoc
import re
import threading
import warnings
from typing import Any, Dict, List, Optional

import pytest

import analytics_vitally
from analytics_vitally import AsyncClient, Client, InvalidTypeError, context
from analytics_vitally.settings import SETTING_NAMES
from analytics_vitally.testing import Receiver

from .conftest import MakeClient

Message = Dict[str, Any]


# before_send. ---------------------------------------------------------------------------------------


def scrub_email(message: Message) -> Message:
    traits = message.get("traits")
    if isinstance(traits, dict) and "email" in traits:
        message["traits"] = {**traits, "email": "[scrubbed]"}
    return message


def test_before_send_scrubs_what_is_sent(make_client: MakeClient, receiver: Receiver) -> None:
    client = make_client(before_send=scrub_email)
    queued, sent = client.identify("32", {"name": "Leo", "email": "leo@example.com"}, account_id="acct-1")
    assert queued and sent["traits"] == {"name": "Leo", "email": "[scrubbed]"}
    assert client.flush(timeout=10)
    (arrived,) = receiver.messages
    assert arrived["traits"] == {"name": "Leo", "email": "[scrubbed]"}
    assert arrived["messageId"] == sent["messageId"] and "timestamp" in arrived  # it saw the completed message
    assert "leo@example.com" not in receiver.requests[0].body.decode()


def test_before_send_returning_none_drops_and_counts(make_client: MakeClient, receiver: Receiver) -> None:
    seen: List[Message] = []

    def drop_internal(message: Message) -> Optional[Message]:
        seen.append(message)
        return None if message.get("event") == "internal" else message

    client = make_client(before_send=drop_internal)
    queued, message = client.track("32", "internal")
    assert (queued, message["event"]) == (False, "internal")
    assert client.track("32", "public")[0] is True
    assert client.flush(timeout=10)
    assert [m["event"] for m in receiver.messages] == ["public"]
    stats = client.stats()
    assert (stats.filtered, stats.enqueued, stats.sent, stats.dropped) == (1, 1, 1, 0)
    assert [m["event"] for m in seen] == ["internal", "public"]  # called once per message, on the caller's thread


def test_a_before_send_that_raises_fails_closed_logged_at_error_rate_limited(
    make_client: MakeClient, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(message: Message) -> Message:
        raise KeyError("traits")

    caplog.set_level(logging.ERROR, logger="analytics_vitally")
    client = make_client(before_send=broken)
    results = [client.identify("32", {"email": "leo@example.com"}, account_id="a") for _ in range(100)]
    assert all(queued is False for queued, _ in results)
    assert client.flush(timeout=10)
    assert receiver.requests == []  # not the unscrubbed original either
    assert client.stats().filtered == 100
    errors = [record for record in caplog.records if "before_send raised KeyError" in record.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None  # one line per 10 s, with the traceback


def test_a_before_send_that_breaks_the_rules_gets_the_error_a_call_would(
    make_client: MakeClient, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    def drop_user(message: Message) -> Message:
        return {key: value for key, value in message.items() if key != "userId"}

    client = make_client(before_send=drop_user)
    queued, _ = client.track("32", "scored-goal")  # nothing else says whose event it is
    assert queued is False
    queued, kept = client.track("32", "scored-goal", account_id="acct-1")  # still valid without userId
    assert queued is True and "userId" not in kept
    assert client.flush(timeout=10)
    assert [m.get("userId") for m in receiver.messages] == [None]
    assert client.stats().filtered == 1
    assert "breaks Vitally's rules: userId or accountId or organizationId is required" in caplog.text


def test_a_before_send_returning_something_else_than_a_message_is_refused(
    make_client: MakeClient, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(before_send=lambda message: [message])
    assert client.track("32", "e")[0] is False
    assert client.flush(timeout=10) and receiver.requests == []
    assert "message must be a dict" in caplog.text


def test_before_send_set_on_the_module_is_used(module_api: Any, receiver: Receiver) -> None:
    module_api.before_send = scrub_email
    module_api.identify("32", {"email": "leo@example.com"}, account_id="acct-1")
    assert module_api.flush(timeout=10)
    assert receiver.messages[0]["traits"] == {"email": "[scrubbed]"}


def test_before_send_must_be_callable() -> None:
    with pytest.raises(analytics_vitally.ConfigurationError, match="before_send"):
        Client("k", subdomain="acme", before_send="scrub")


# The request context. ---------------------------------------------------------------------------------


def test_two_asyncio_tasks_interleaving_keep_their_own_account(receiver: Receiver) -> None:
    async def main() -> None:
        async with AsyncClient("test-token", host=receiver.url, max_queue_size=10_000) as client:

            async def tenant(account: str) -> None:
                with context(account_id=account, properties={"tenant": account}):
                    for i in range(500):
                        await client.track("u", "e", {"i": i})
                        await asyncio.sleep(0)  # the other task runs in between

            await asyncio.gather(tenant("acct-a"), tenant("acct-b"))
            assert await client.flush(timeout=20)

    asyncio.run(main())
    messages = receiver.messages
    assert len(messages) == 1000
    assert all(m["accountId"] == m["properties"]["tenant"] for m in messages)
    assert sorted(m["accountId"] for m in messages) == ["acct-a"] * 500 + ["acct-b"] * 500
    firsts = [m["accountId"] for m in messages[:20]]
    assert "acct-a" in firsts and "acct-b" in firsts  # they did interleave


def test_contexts_nest_and_a_call_s_own_arguments_win(make_client: MakeClient, receiver: Receiver) -> None:
    client = make_client()
    with context(account_id="outer", organization_id="org-1", properties={"plan": "pro", "region": "eu"}):
        with context(account_id="inner", properties={"region": "us"}):
            client.track("u", "nested", {"region": "call"})
            client.track("u", "explicit", account_id="given", organization_id="org-given")
            client.identify("u", {"name": "Leo"})
        client.track("u", "outer")
        client.group("acct-9", {"name": "Argentina"})
        client.organization("org-2")
        client.unlink("u", "acct-9")
    client.track("u", "outside", account_id="a")
    assert client.flush(timeout=10)
    by_event = {m.get("event", m["type"]): m for m in receiver.messages}
    assert by_event["nested"]["accountId"] == "inner" and by_event["nested"]["organizationId"] == "org-1"
    assert by_event["nested"]["properties"] == {"plan": "pro", "region": "call"}
    assert (by_event["explicit"]["accountId"], by_event["explicit"]["organizationId"]) == ("given", "org-given")
    assert (by_event["user"]["accountId"], by_event["user"]["organizationId"]) == ("inner", "org-1")
    assert "traits" in by_event["user"] and "properties" not in by_event["user"]
    assert by_event["outer"]["accountId"] == "outer"
    assert by_event["outer"]["properties"] == {"plan": "pro", "region": "eu"}
    assert (by_event["account"]["accountId"], by_event["account"]["organizationId"]) == ("acct-9", "org-1")
    assert by_event["organization"]["organizationId"] == "org-2"  # its subject: never filled
    assert by_event["unlink"]["accountId"] == "acct-9"
    assert by_event["outside"]["properties"] == {} and by_event["outside"]["accountId"] == "a"


def test_context_as_a_decorator_of_plain_and_async_functions(make_client: MakeClient, receiver: Receiver) -> None:
    client = make_client()

    @context(account_id="sync-acct")
    def handle() -> None:
        client.track(None, "sync")

    @context(account_id="async-acct")
    async def handle_async() -> None:
        await asyncio.sleep(0)
        client.track(None, "async")

    handle()
    asyncio.run(handle_async())
    client.track("u", "after")
    assert client.flush(timeout=10)
    assert [(m["event"], m.get("accountId")) for m in receiver.messages] == [
        ("sync", "sync-acct"),
        ("async", "async-acct"),
        ("after", None),
    ]


def test_a_new_thread_starts_without_the_context_unless_it_is_carried(
    make_client: MakeClient, receiver: Receiver
) -> None:
    client = make_client()
    with context(account_id="acct-1"):
        plain = threading.Thread(target=lambda: client.track("u", "plain thread"))
        carried_context = contextvars.copy_context()
        carried = threading.Thread(target=lambda: carried_context.run(client.track, "u", "carried"))
        plain.start(), carried.start()
        plain.join(), carried.join()
    assert client.flush(timeout=10)
    by_event = {m["event"]: m for m in receiver.messages}
    assert "accountId" not in by_event["plain thread"] and by_event["carried"]["accountId"] == "acct-1"


def test_context_properties_must_be_a_dict() -> None:
    with pytest.raises(InvalidTypeError, match="properties"):
        context(properties=["plan"])  # type: ignore[arg-type]


# Typos and late settings. -------------------------------------------------------------------------------


def test_a_misspelt_module_setting_raises_naming_the_closest() -> None:
    with pytest.raises(AttributeError, match=r"no setting 'wrtie_key' \(did you mean 'write_key'\?\)"):
        analytics_vitally.wrtie_key = "k"  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="did you mean 'upload_size'"):
        analytics_vitally.uplaod_size = 10  # type: ignore[attr-defined]
    assert not hasattr(analytics_vitally, "wrtie_key")


def test_a_misspelt_keyword_names_the_caller_and_the_closest_setting() -> None:
    with pytest.raises(TypeError, match=r"^Client\(\) got an unknown setting 'uplaod_interval' \(did you mean"):
        Client("k", uplaod_interval=1)
    with pytest.raises(TypeError, match=r"^AsyncClient\(\) got an unknown setting 'sync_mod' \(did you mean"):
        AsyncClient("k", sync_mod=True)
    with pytest.raises(TypeError, match=r"^configure\(\) got an unknown setting 'hots' \(did you mean 'host'"):
        analytics_vitally.configure(hots="http://127.0.0.1:9")


def test_changing_a_setting_after_the_default_client_was_made_warns_once(module_api: Any, receiver: Receiver) -> None:
    module_api.send = False  # before the first call: no warning
    module_api.track("u", "e")
    with pytest.warns(RuntimeWarning, match=r"analytics_vitally.debug was changed .*configure\(debug=...\)"):
        module_api.debug = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module_api.upload_size = 10  # said once
    assert module_api.default_client().settings.debug is False  # it kept its settings, as the warning says
    module_api.configure(send=False, debug=True)
    assert module_api.default_client().settings.debug is True


# The shell view. -----------------------------------------------------------------------------------


def test_module_functions_read_as_module_functions() -> None:
    for name in ("organization", "group", "identify", "track", "unlink", "custom_object_instance", "enqueue"):
        function = getattr(analytics_vitally, name)
        parameters = list(inspect.signature(function).parameters)
        assert parameters[0] != "self" and parameters == list(inspect.signature(getattr(Client, name)).parameters)[1:]
        assert function.__module__ == "analytics_vitally" and function.__qualname__ == name
        assert "client." not in (function.__doc__ or "") and f"analytics.{name}(" in (function.__doc__ or "")
    shown = pydoc.render_doc(analytics_vitally, renderer=pydoc.plaintext)
    # FUNCTIONS lists it without self (classes show ' |  '); 3.13's pydoc puts a long signature one parameter a line
    assert re.search(r"\n    track\(\s*user_id: ", shown) and not re.search(r"\n    track\(\s*self\b", shown)
    assert all(f"{name} = " in shown for name in SETTING_NAMES)


def test_an_async_client_in_sync_mode_carries_the_context_to_its_thread(receiver: Receiver) -> None:
    async def main() -> None:
        client = AsyncClient("test-token", host=receiver.url, sync_mode=True)
        with context(account_id="acct-1"):
            queued, _ = await client.track("u", "sync")  # delivered on a thread of its own before it returns
        assert queued
        await client.shutdown(timeout=5)

    asyncio.run(main())
    assert [m.get("accountId") for m in receiver.messages] == ["acct-1"]


def test_what_before_send_returns_is_completed_as_enqueue_does(make_client: MakeClient, receiver: Receiver) -> None:
    def reshape(message: Message) -> Message:
        return {**message, "accountId": None, "organizationId": 7, "timestamp": "2023-05-15T14:31:12+02:00"}

    client = make_client(before_send=reshape)
    queued, sent = client.track("32", "e", account_id="acct-1")
    assert queued
    assert client.flush(timeout=10)
    (arrived,) = receiver.messages
    assert "accountId" not in arrived and arrived["organizationId"] == "7"  # None left out, integer ID a string
    assert arrived["timestamp"] == "2023-05-15T12:31:12.000Z" == sent["timestamp"]
