"""The four clients behind one small interface: build one, make a track call, flush.

Every client sends the same event (same user IDs, event name and properties);
each adds what it always adds (Segment's context.library, PostHog's $lib
properties...), which is part of its cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict

WRITE_KEY = "bench-key"
EVENT = "Benchmark Event"
CLIENTS = ("ours", "segment", "rudder", "posthog")
FACES = ("ours-module", "ours-segment-face")
"""Ours through its two module APIs (``analytics_vitally.track`` and ``analytics_vitally.segment.track``), for
bench/dropin.py: the same call, the same client underneath."""
LABELS = {
    "ours": "analytics_vitally",
    "segment": "segment-analytics-python",
    "rudder": "rudder-sdk-python",
    "posthog": "posthog",
}


@dataclass
class Bench:
    """One client, ready to measure."""

    track: Callable[[int], Any]
    """Make the i-th track call."""
    flush: Callable[[], Any]
    """Block until the client says everything queued was sent."""
    dropped: Callable[[], int]
    """Messages the client says it dropped (-1 when it does not say)."""
    version: str


def build(name: str, url: str, settings: Dict[str, Any]) -> Bench:
    """Build client ``name`` sending to ``url`` with extra constructor ``settings``.

    All four take ``max_queue_size`` and ``thread`` under those names.
    """
    return _BUILDERS[name](url, settings)


def _ours(url: str, settings: Dict[str, Any]) -> Bench:
    from analytics_vitally import Client, __version__

    client = Client(WRITE_KEY, host=url, **settings)
    track = client.track

    def call(i: int) -> Any:
        return track(f"user-{i % 1000}", EVENT, {"plan": "pro", "index": i, "amount": 12.5})

    return Bench(call, lambda: client.flush(300), lambda: client.stats().dropped, __version__)


def _segment(url: str, settings: Dict[str, Any]) -> Bench:
    from segment.analytics import Client, __version__

    client = Client(WRITE_KEY, host=url, **settings)
    track = client.track

    def call(i: int) -> Any:
        return track(f"user-{i % 1000}", EVENT, {"plan": "pro", "index": i, "amount": 12.5})

    return Bench(call, client.flush, lambda: -1, __version__)


def _rudder(url: str, settings: Dict[str, Any]) -> Bench:
    from rudderstack.analytics import Client, __version__

    client = Client(WRITE_KEY, host=url, **settings)
    track = client.track

    def call(i: int) -> Any:
        return track(f"user-{i % 1000}", EVENT, {"plan": "pro", "index": i, "amount": 12.5})

    return Bench(call, client.flush, lambda: -1, __version__)


def _posthog(url: str, settings: Dict[str, Any]) -> Bench:
    from posthog import Posthog
    from posthog.version import VERSION

    # No personal/secret API key: no feature-flag poller, no flag requests.
    client = Posthog(WRITE_KEY, host=url, enable_local_evaluation=False, **settings)
    capture = client.capture

    def call(i: int) -> Any:
        return capture(EVENT, distinct_id=f"user-{i % 1000}", properties={"plan": "pro", "index": i, "amount": 12.5})

    return Bench(call, lambda: client.flush(timeout_seconds=300), lambda: -1, VERSION)


def _ours_module(url: str, settings: Dict[str, Any]) -> Bench:
    import analytics_vitally as analytics

    analytics.configure(write_key=WRITE_KEY, host=url, **settings)
    track = analytics.track

    def call(i: int) -> Any:
        return track(f"user-{i % 1000}", EVENT, {"plan": "pro", "index": i, "amount": 12.5})

    return Bench(call, lambda: analytics.flush(300), lambda: analytics.stats().dropped, analytics.__version__)


def _ours_segment_face(url: str, settings: Dict[str, Any]) -> Bench:
    import analytics_vitally.segment as analytics

    analytics.write_key = WRITE_KEY
    analytics.host = url
    for name, value in settings.items():
        setattr(analytics, name, value)
    track = analytics.track

    def call(i: int) -> Any:
        return track(f"user-{i % 1000}", EVENT, {"plan": "pro", "index": i, "amount": 12.5})

    def dropped() -> int:
        made = analytics.default_client
        return -1 if made is None else made.client.stats().dropped

    return Bench(call, lambda: analytics.flush(300), dropped, analytics.__version__)


_BUILDERS: Dict[str, Callable[[str, Dict[str, Any]], Bench]] = {
    "ours": _ours,
    "segment": _segment,
    "rudder": _rudder,
    "posthog": _posthog,
    "ours-module": _ours_module,
    "ours-segment-face": _ours_segment_face,
}
