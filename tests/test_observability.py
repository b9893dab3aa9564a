"""What operators and tests can see: OpenTelemetry metrics (with the SDK's in-memory reader) and
``testing.capture()`` (no thread, no socket)."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any, List

import pytest

import analytics_vitally
from analytics_vitally import Client, InvalidMessageError
from analytics_vitally.testing import Captured, Receiver, capture

from .conftest import run_script

METRICS_SCRIPT = """
import json
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
import analytics_vitally
from analytics_vitally.testing import Receiver, Reply

def refuse_one(request):
    if any(message.get("properties", {}).get("refuse") for message in request.messages or []):
        return Reply(400, {"message": "Bad Request", "errors": [{"error": "refused"}]})
    return None

reader = InMemoryMetricReader()
analytics_vitally.instrument_metrics(MeterProvider(metric_readers=[reader]))
with Receiver(token="test-token", respond=refuse_one) as receiver:
    client = analytics_vitally.Client("test-token", host=receiver.url, upload_size=100, upload_interval=60)
    for i in range(1000):
        client.track("u", "e", {"i": i, "refuse": i == 500})
    during = reader.get_metrics_data()  # queued, not sent yet: the gauge sees them
    assert client.flush(timeout=30)
    requests = len(receiver.requests)
stats = client.stats()
found = {}
for data in (during, reader.get_metrics_data()):
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points = [
                    {"value": getattr(point, "value", None), "count": getattr(point, "count", None),
                     "attributes": dict(point.attributes or {})}
                    for point in metric.data.data_points
                ]
                found.setdefault(metric.name, []).append({"unit": metric.unit, "points": points})
print(json.dumps({"stats": {"sent": stats.sent, "failed": stats.failed}, "requests": requests, "metrics": found}))
"""


def test_exported_counts_equal_stats_and_the_gauge_and_histogram_are_there() -> None:
    pytest.importorskip("opentelemetry.sdk.metrics")
    result = run_script(METRICS_SCRIPT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    metrics = report["metrics"]
    last = {name: readings[-1] for name, readings in metrics.items()}
    assert report["stats"] == {"sent": 999, "failed": 1}
    assert last["vitally.client.messages.sent"]["points"][0]["value"] == 999
    assert last["vitally.client.messages.failed"]["points"][0]["value"] == 1
    assert last["vitally.client.messages.dropped"]["points"][0]["value"] == 0
    assert last["vitally.client.messages.sent"]["unit"] == "{message}"
    assert 0 < metrics["vitally.client.queue.size"][0]["points"][0]["value"] <= 1000  # read before the flush
    assert last["vitally.client.queue.size"]["points"][0]["value"] == 0
    durations = last["http.client.request.duration"]
    assert durations["unit"] == "s"
    by_status = {point["attributes"].get("http.response.status_code"): point["count"] for point in durations["points"]}
    assert sum(by_status.values()) == report["requests"] and by_status[200] >= 1 and by_status[400] >= 1
    assert all(point["attributes"]["server.address"] == "127.0.0.1" for point in durations["points"])
    refused = [point for point in durations["points"] if point["attributes"].get("http.response.status_code") == 400]
    assert all(point["attributes"]["error.type"] == "400" for point in refused)


def test_without_the_extra_instrument_metrics_names_it() -> None:
    result = run_script(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if opentelemetry-api were not installed
        import analytics_vitally
        try:
            analytics_vitally.instrument_metrics()
        except ImportError as error:
            print(error)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'analytics-vitally[otel]'" in result.stdout


# capture(). -----------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """socket.socket.connect raises, and every thread start is counted (the test's own threads too)."""
    started: List[str] = []
    real_start = threading.Thread.start

    def counted_start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    def refuse(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"a socket tried to connect to {address!r} under capture()")

    monkeypatch.setattr(threading.Thread, "start", counted_start)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return started


def test_module_level_calls_are_captured_without_a_thread_or_a_socket(module_api: Any, no_network: List[str]) -> None:
    module_api.write_key = None  # nothing configured: capture needs no key
    module_api.before_send = lambda message: (
        {**message, "properties": {**message["properties"], "scrubbed": True}} if "properties" in message else message
    )
    with capture() as sent:
        for i in range(1000):
            assert module_api.track("32", "scored-goal", {"minute": i})[0]
        with pytest.raises(InvalidMessageError, match="event"):
            module_api.track("32", "")
        module_api.identify("32", {"name": "Leo", "email": "leo@example.com"}, account_id="acct-1")
        module_api.group("acct-1", {"name": "Argentina"})
        assert module_api.flush(timeout=5)
    assert no_network == []
    assert len(sent.messages) == 1002
    assert sent.messages[0]["properties"] == {"minute": 0, "scrubbed": True}  # before_send applied
    assert sent.assert_tracked("scored-goal", user_id="32", properties={"minute": 999})["messageId"]
    sent.assert_identified("32", name="Leo")
    sent.assert_grouped("acct-1", name="Argentina")
    with pytest.raises(AssertionError, match=r"no track message with event='never-sent' was sent; sent 1002:"):
        sent.assert_tracked("never-sent")
    with pytest.raises(AssertionError, match=r"minute.: 1000"):
        sent.assert_tracked("scored-goal", properties={"minute": 1000})
    with pytest.raises(AssertionError, match="expected nothing sent"):
        sent.assert_nothing_sent()
    sent.clear()
    sent.assert_nothing_sent()
    assert analytics_vitally.default.client is None  # the block's client is gone with it


def test_a_given_client_is_captured_then_sends_again(make_client: Any, receiver: Receiver) -> None:
    client: Client = make_client()
    with capture(client) as sent:
        client.track("32", "held")
    client.track("32", "after")
    assert client.flush(timeout=10)
    assert [m["event"] for m in sent.messages] == ["held"]
    assert [m["event"] for m in receiver.messages] == ["after"]


def test_the_vitally_capture_fixture(vitally_capture: Captured) -> None:
    analytics_vitally.track(None, "plan-renewed", account_id="acct-1")
    vitally_capture.assert_tracked("plan-renewed", account_id="acct-1")


def test_an_async_client_is_captured(no_network: List[str]) -> None:
    import asyncio

    from analytics_vitally import AsyncClient

    async def main() -> Captured:
        client = AsyncClient("k", subdomain="acme")
        with capture(client) as sent:
            await client.track("32", "from-a-task")
        return sent

    sent = asyncio.run(main())
    sent.assert_tracked("from-a-task", user_id="32")
    assert no_network == []
