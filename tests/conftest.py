from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

import analytics_vitally
from analytics_vitally import Client
from analytics_vitally.settings import SETTING_NAMES, Settings
from analytics_vitally.testing import Receiver

TOKEN = "test-token"
COMMAND = str(Path(sys.executable).with_name("analytics-vitally"))
"""The installed command line, beside this interpreter (its venv's bin need not be on PATH)."""
MakeClient = Callable[..., Client]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(token=TOKEN) as running:
        yield running


@pytest.fixture
def make_client(receiver: Receiver) -> Iterator[MakeClient]:
    """Clients pointed at the receiver; each is shut down (bounded) after the test."""
    clients: List[Client] = []

    def make(**settings: Any) -> Client:
        settings.setdefault("host", receiver.url)
        client = Client(settings.pop("write_key", TOKEN), **settings)
        clients.append(client)
        return client

    yield make
    for client in clients:
        if not client.shutdown(timeout=1):
            client._transport.abort()  # no retries left running into the next test


@pytest.fixture
def module_api(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The module-level API pointed at the receiver, reset to its defaults afterwards."""
    analytics_vitally.shutdown(timeout=5)  # a default client left by an earlier test
    analytics_vitally.default.client = None  # so the settings below are not "changed after it was made"
    defaults = Settings()
    for name in SETTING_NAMES:
        monkeypatch.setattr(analytics_vitally, name, getattr(defaults, name))
    monkeypatch.setattr(analytics_vitally, "write_key", TOKEN)
    monkeypatch.setattr(analytics_vitally, "host", receiver.url)
    yield analytics_vitally
    analytics_vitally.shutdown(timeout=5)
    analytics_vitally.default.client = None  # before the settings are put back


@pytest.fixture
def segment_api(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``analytics_vitally.segment`` (Segment's module API) pointed at the receiver, reset afterwards."""
    from analytics_vitally import segment
    from analytics_vitally.segment.arguments import SEGMENT_ONLY

    def forget() -> None:
        made = segment.default_client
        segment.default_client = None
        if made is not None and not made.shutdown(timeout=5):
            made.client._transport.abort()

    forget()
    defaults = Settings()
    for name in SETTING_NAMES:
        monkeypatch.setattr(segment, name, getattr(defaults, name))
    for name, value in SEGMENT_ONLY.items():
        monkeypatch.setattr(segment, name, value)
    monkeypatch.setattr(segment, "write_key", TOKEN)
    monkeypatch.setattr(segment, "host", receiver.url)
    yield segment
    forget()  # before the settings are put back


def run_script(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with ``env`` added to the environment."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
