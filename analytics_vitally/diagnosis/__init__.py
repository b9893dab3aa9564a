"""``doctor()``: why is nothing arriving? A configuration checked end to end, one finding at a time.

    report = analytics_vitally.doctor()      # inside the app: the default client, or doctor(client)
    print(report)                            # plain text for a support ticket; never shows the write key

``analytics-vitally doctor`` runs the same checks from a shell. In order, each in its module:

- ``configuration``: the settings in force and where each came from (argument, module attribute,
  environment variable, default);
- ``network``: the endpoint URL, the proxy in use and whether it could read the write key, DNS, TCP
  and TLS (certificate, protocol);
- ``answers``: whether Vitally accepts the write key (an empty batch, which creates no data; its
  docstring says what each answer means), and with ``send_test`` one real, clearly named event;
- ``process``: uWSGI threads, gevent or eventlet, forks, the SIGTERM handler; the client's ``stats()``
  (inside the app only);
- ``storage``: the spool: writable, free space, what it holds by destination and key, dead letters.

``report``: ``Finding`` and ``Report``; a report is ``ok`` only when a message would be delivered.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

from .. import default
from ..client import Client
from ..settings import ENVIRONMENT, SETTING_NAMES, check_names
from ..transport import Transport
from . import answers, configuration, network, process, storage
from .answers import TEST_EVENT, TEST_USER
from .report import LEVELS, NOTE, PROBLEM, WARNING, Finding, Findings, Report

if TYPE_CHECKING:
    from ..aio import AsyncClient


def doctor(
    client: Union[Client, AsyncClient, None] = None,
    *,
    send_test: bool = False,
    test_user: str = TEST_USER,
    **settings: Any,
) -> Report:
    """Check that a message would reach Vitally, and say what stops it; returns a ``Report``.

        report = analytics_vitally.doctor()
        print(report)                        # paste it into a support ticket: it never shows the write key
        assert report.ok, report.problems

    Without arguments it checks the default client: the module settings, and its ``stats()`` if it
    was made. ``doctor(client)`` checks that client (a ``Client`` or an ``AsyncClient``); settings
    given as keywords (as ``configure()`` takes them) are checked instead of the module's. It posts
    one empty batch, which creates no data in Vitally; ``send_test=True`` also sends one track event,
    ``"analytics-vitally doctor test"``, for the user ``test_user``: real data, and the report says
    so. It blocks for a few times ``timeout`` at most: in asyncio code, run it in a thread
    (``await asyncio.to_thread(analytics_vitally.doctor, client)``).
    """
    check_names("doctor()", settings)
    if client is not None and settings:
        raise TypeError("doctor() takes a client or settings, not both")
    if client is not None:
        target = client if isinstance(client, Client) else client.client
        found = Findings(target.settings.write_key or "")
        chosen = configuration.from_client(target.settings, found)
        return _examine(chosen, found, send_test, test_user, target, "this client's stats()")
    package = sys.modules[__name__.rpartition(".")[0]]  # above us (and what loaded us): read, not imported
    module = {name: getattr(package, name) for name in SETTING_NAMES}
    found = Findings(_key(settings["write_key"] if "write_key" in settings else module["write_key"]))
    made = None if settings else default.client  # given settings are not the default client's
    if made is not None and default.told_late:
        found.add(
            "settings",
            WARNING,
            "a module setting was changed after the default client was made: the client still uses the values it "
            "was made with, and those below are the module's",
            "call analytics_vitally.configure(...) with the new values (at start-up), which makes it again",
        )
    chosen = configuration.from_arguments(settings, module, lambda name: f"argument {name}=", found)
    return _examine(chosen, found, send_test, test_user, made, "the default client's stats()")


def from_command_line(given: Mapping[str, Any], send_test: bool, test_user: str) -> Report:
    """``analytics-vitally doctor``: the settings ``given`` as options, the rest from the environment."""
    found = Findings(_key(given.get("write_key")))
    chosen = configuration.from_arguments(given, {}, lambda name: f"option --{name.replace('_', '-')}", found)
    return _examine(chosen, found, send_test, test_user, None, "", in_app=False)


def _examine(
    chosen: configuration.Chosen,
    found: Findings,
    send_test: bool,
    test_user: str,
    client: Optional[Client],
    stats_of: str,
    in_app: bool = True,
) -> Report:
    """Every check after the settings', in order, then the report."""
    delivers = False
    settings = chosen.settings
    if chosen.reachable is None:
        found.add("endpoint", PROBLEM, "unknown: neither subdomain nor host is usable", "see the settings above")
    else:
        one_try = replace(settings or chosen.reachable, max_retries=0)  # every request below: one try
        transport = Transport(one_try)
        connected = network.check(network.Route(one_try, transport.environment), found)
        if settings is not None and settings.send and connected:
            delivers = answers.check_write_key(one_try, transport, found)
            if send_test:
                delivers = answers.send_test(one_try, test_user, found)
        elif send_test:
            found.add("test event", NOTE, "not sent: the checks above failed")
    counters = client.stats() if client is not None else None
    if in_app:
        process.check(client.settings if client is not None else settings, found)
        if counters is not None:
            process.stats(found, counters, stats_of)
    else:
        process.outside_the_app(found)
    storage.check(chosen.spool, settings, found)
    return found.report(delivers, counters)


def _key(value: Any) -> str:
    """The write key as a client would send it (from the environment if unset), to keep out of the report."""
    if not value:
        value = os.environ.get(ENVIRONMENT["write_key"], "")
    return value.strip() if isinstance(value, str) else ""


__all__ = ["LEVELS", "TEST_EVENT", "TEST_USER", "Finding", "Report", "doctor"]
