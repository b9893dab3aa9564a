"""``instrument_metrics()``: every client's counts as OpenTelemetry metrics (the ``otel`` extra).

The counters and gauges are observable: the meter reads this process's totals
(``delivery.totals``) and the live clients' queues and spools when it collects, so a
call costs nothing more. Only the request duration is recorded as it happens, by the
worker thread, after each request.

Instruments (meter ``analytics_vitally``):

- ``vitally.client.messages.sent``, ``.failed``, ``.dropped``, ``.filtered`` (counters, ``{message}``):
  accepted by Vitally; failed for good (reported to on_error); refused by a full queue or spool;
  left out by ``before_send``. Every client of the process, those gone included.
- ``vitally.client.requests.retried`` (counter, ``{request}``): requests tried again.
- ``vitally.client.queue.size`` (gauge, ``{message}``): messages waiting in the live clients' queues.
- ``vitally.client.spool.size`` (gauge, ``By``): the files the live clients' spools hold.
- ``http.client.request.duration`` (histogram, ``s``), as OpenTelemetry's HTTP semantic conventions
  name it, with ``http.request.method``, ``server.address``, ``server.port``,
  ``http.response.status_code`` (when an answer came) and ``error.type`` (the status of a failed
  request, or ``no_response``).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterable, Optional, Set
from urllib.parse import urlsplit

from . import lifecycle
from .delivery import RequestObserver, request_observers, totals
from .version import VERSION

_instrumented: Set[int] = set()
_lock = threading.Lock()


def instrument_metrics(meter_provider: Any = None) -> None:
    """Export every client's counts (those made later too) through OpenTelemetry's metrics API.

        from opentelemetry.sdk.metrics import MeterProvider
        analytics_vitally.instrument_metrics(MeterProvider(metric_readers=[reader]))

    ``meter_provider`` None: the global one (``opentelemetry.metrics.get_meter_provider()``).
    Calling it again with the same provider does nothing. Needs ``opentelemetry-api``:
    ``pip install 'analytics-vitally[otel]'``; the SDK and the exporter are the application's.
    """
    try:
        from opentelemetry import metrics
    except ImportError:
        raise ImportError(
            "instrument_metrics() needs OpenTelemetry's API: pip install 'analytics-vitally[otel]'"
        ) from None
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    with _lock:
        if id(provider) in _instrumented:
            return
        _instrumented.add(id(provider))
    meter = provider.get_meter("analytics_vitally", VERSION)

    def counted(name: str) -> Callable[[Any], Iterable[Any]]:
        def observe(options: Any) -> Iterable[Any]:
            return [metrics.Observation(getattr(totals.get(), name))]

        return observe

    for name, description in (
        ("sent", "Messages Vitally accepted"),
        ("failed", "Messages that failed for good (reported to on_error)"),
        ("dropped", "Messages refused because the queue or the spool was full"),
        ("filtered", "Messages before_send left out, or failed on"),
    ):
        meter.create_observable_counter(
            f"vitally.client.messages.{name}", callbacks=[counted(name)], unit="{message}", description=description
        )
    meter.create_observable_counter(
        "vitally.client.requests.retried",
        callbacks=[counted("retried")],
        unit="{request}",
        description="Requests tried again",
    )
    meter.create_observable_gauge(
        "vitally.client.queue.size",
        callbacks=[lambda options: [metrics.Observation(_queued())]],
        unit="{message}",
        description="Messages waiting in the clients' queues",
    )
    meter.create_observable_gauge(
        "vitally.client.spool.size",
        callbacks=[lambda options: [metrics.Observation(sum(spool.disk_bytes for spool in lifecycle.spools()))]],
        unit="By",
        description="Bytes of the files the clients' spools hold",
    )
    duration = meter.create_histogram(
        "http.client.request.duration", unit="s", description="Duration of the requests to Vitally's batch endpoint"
    )
    request_observers.append(_recorder(duration))


def _queued() -> int:
    return sum(int(worker.stats().queue_depth) for worker in lifecycle.workers())


def _recorder(histogram: Any) -> RequestObserver:
    servers: Dict[str, Dict[str, Any]] = {}

    def record(url: str, seconds: float, status: Optional[int], error: Optional[str]) -> None:
        server = servers.get(url)
        if server is None:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            server = {"http.request.method": "POST", "server.address": parts.hostname, "server.port": port}
            servers[url] = server
        attributes = dict(server)
        if status is not None:
            attributes["http.response.status_code"] = status
        if error is not None:
            attributes["error.type"] = error
        histogram.record(seconds, attributes)

    return record


__all__ = ["instrument_metrics"]
