"""Segment's ``analytics-python``, spoken to Vitally: change one import, nothing else.

    import analytics_vitally.segment as analytics    # was: import segment.analytics as analytics
    analytics.write_key = "..."                      # Vitally's Analytics API token
    analytics.subdomain = "acme"                     # or VITALLY_SUBDOMAIN (a Segment host is refused)
    analytics.identify("32", {"email": "messi@example.com"})
    analytics.group("32", "acct-1", {"name": "Argentina"})
    analytics.track("32", "scored-goal", {"minute": 14})
    analytics.flush()

Segment's module functions, module settings and ``Client``, with Segment's signatures (positional
order included) and return values (``(queued, message)``, the message in Segment's shape), as a
face over ``analytics_vitally.Client``: the same queue, worker, rules and encoder. The main module
stays Vitally-shaped; only this one reads calls the Segment way. How Segment's calls become
Vitally's messages:

- ``group(user_id, group_id, traits)``: an ``account`` (``accountId`` = group_id, the traits) and
  a ``user`` linking the user to it (with any traits ``identify`` held for them). Their
  messageIds are derived from ``message_id`` (UUID5 of it), so a replay sends the same pair.
  With only an ``anonymous_id``, the account alone.
- ``identify(user_id, traits)``: a ``user`` in the account ``context["groupId"]`` names (Segment's
  field for the account of a call), else in the account this client last saw the user join in
  ``group()`` (the last ``MAX_USERS`` users are remembered). With neither, nothing is sent yet:
  the traits are held (at most ``MAX_USERS`` users and ``MAX_HELD_BYTES``, the oldest let go
  with a warning) and go out with the user's link when ``group()`` names their account, which is
  Segment's documented order (identify at sign-up, then group). Said once per client; what is
  still held when the client ends is logged with its count.
- ``track``: ``context["groupId"]`` becomes ``accountId``; the rest of ``context`` is dropped.
- ``page``/``screen``: a ``track`` of the same user named as Segment's destinations name them:
  ``Viewed {category} {name} Page`` (or ``Screen``), ``Viewed {name} Page`` without a category,
  ``Loaded a Page`` (``Loaded a Screen``) without a name; ``name`` and ``category`` are added to
  the properties (a property of that name given by the call wins).
- ``alias``: nothing sent (Vitally keys users by your own ID); a warning, once per client.
- ``anonymous_id``: dropped beside a ``user_id``. With only an ``anonymous_id``, nothing is sent
  (Vitally has no anonymous users) and a warning says so, once per client.
- ``integrations``: routed as Segment routes: ``{"Vitally": False}``, or ``{"All": False}``
  without a true ``"Vitally"``, means the call is not sent; otherwise the field is dropped.
- Values Segment cleans are cleaned: ``bytes`` become text, and a value JSON cannot take (an
  object, NaN, a bytes that is not UTF-8) is dropped with a warning naming it; ``tuple`` and
  ``set`` are lists. A call Segment accepts never raises here. A call Segment refuses (no
  ``user_id`` and no ``anonymous_id``, ``traits`` that is not a dict, no ``event``) raises
  ``InvalidMessageError``/``InvalidTypeError`` naming the argument, where Segment raises
  ``AssertionError``.
- A naive ``timestamp`` within 5 s of ``datetime.now()`` is read as local time, any other naive
  one as UTC (Segment's rule).

``(queued, message)``: ``queued`` is False only when the client refused the call (a full queue
or spool); a call deliberately not sent (``alias``, anonymous, routed away) or held is True.

Settings: every setting of ``analytics_vitally`` (``subdomain``, ``spool``...) under its name,
and Segment's own: ``max_total_backoff_duration`` is ``max_retry_time``; ``upload_size`` above
100 is taken as 100 (Vitally's batch limit) with a warning; ``oauth_*`` and
``max_rate_limit_duration`` are accepted and do nothing (an ``oauth_client_id``,
``oauth_client_key`` or ``oauth_key_id`` that is not None is a ConfigurationError: Vitally's
credential is the write key). ``default_client`` is None until the first call; setting it to None
makes a new one from the settings at the next call.
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
import types
import warnings
from typing import Any, Callable, Dict, Optional

from ..lifecycle import PerProcess
from ..settings import SETTING_NAMES, Settings, unknown_setting
from ..version import VERSION
from .arguments import SEGMENT_ONLY
from .client import Client

# The module: Segment's settings and functions over a default client. ----------------------

_defaults = Settings()
write_key: Optional[str] = _defaults.write_key
subdomain: Optional[str] = _defaults.subdomain
host: Optional[str] = _defaults.host
on_error = _defaults.on_error
debug: bool = _defaults.debug
log_handler: Optional[logging.Handler] = _defaults.log_handler
send: bool = _defaults.send
sync_mode: bool = _defaults.sync_mode
max_queue_size: int = _defaults.max_queue_size
gzip: bool = _defaults.gzip
timeout: float = _defaults.timeout
max_retries: int = _defaults.max_retries
upload_size: int = _defaults.upload_size
upload_interval: float = _defaults.upload_interval
proxies: Optional[Dict[str, str]] = _defaults.proxies
thread: int = _defaults.thread
globals().update({name: getattr(_defaults, name) for name in SETTING_NAMES if name not in globals()})
globals().update(SEGMENT_ONLY)

default_client: Optional[Client] = None
"""The client behind the module functions: None until the first call; set it to None to make a new one."""
__version__ = VERSION

_lock = PerProcess(threading.Lock)
_made_with: Dict[str, Any] = {}
"""The settings the default client was made with (a later change warns, once)."""


def _default() -> Client:
    global default_client
    with _lock.get():
        made = default_client
        if made is None:
            module = globals()
            chosen = {name: module[name] for name in (*SETTING_NAMES, *SEGMENT_ONLY)}
            made = default_client = Client(**chosen)
            _made_with.clear()
            _made_with.update(chosen)
        return made


def _proxy(method: Callable[..., Any]) -> Callable[..., Any]:
    """A module function calling ``method`` on the default client, with its signature and docstring."""
    name = method.__name__

    def call(*args: Any, **kwargs: Any) -> Any:
        made = default_client
        if made is None:
            made = _default()
        return getattr(made, name)(*args, **kwargs)

    signature = inspect.signature(method)
    call.__name__ = call.__qualname__ = name
    call.__module__ = __name__
    call.__doc__ = (method.__doc__ or "").replace("client.", "analytics.")
    call.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])  # type: ignore[attr-defined]
    return call


track = _proxy(Client.track)
identify = _proxy(Client.identify)
group = _proxy(Client.group)
page = _proxy(Client.page)
screen = _proxy(Client.screen)
alias = _proxy(Client.alias)
flush = _proxy(Client.flush)
join = _proxy(Client.join)
shutdown = _proxy(Client.shutdown)

_NAMES = frozenset((*SETTING_NAMES, *SEGMENT_ONLY))


def _changed(before: Any, after: Any) -> bool:
    if before is after:
        return False
    try:
        return type(before) is not type(after) or bool(before != after)
    except Exception:  # a value whose == raises: take it as changed
        return True


class _Module(types.ModuleType):
    """This module, whose settings are checked when set: a typo raises, a change after the client was made warns."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _NAMES:
            if default_client is not None and _changed(_made_with.get(name, value), value):
                _made_with.pop(name)  # said once per setting and client
                warnings.warn(
                    f"analytics_vitally.segment.{name} was changed after the default client was made, which keeps "
                    "the settings it was made with: set analytics.default_client = None to make it again",
                    RuntimeWarning,
                    stacklevel=2,
                )
        elif not name.startswith("_") and name not in self.__dict__ and not isinstance(value, types.ModuleType):
            raise AttributeError(f"analytics_vitally.segment has no setting {unknown_setting(name)}")
        super().__setattr__(name, value)


__all__ = [
    "VERSION",
    "Client",
    "alias",
    "default_client",
    "flush",
    "group",
    "identify",
    "join",
    "page",
    "screen",
    "shutdown",
    "track",
]

sys.modules[__name__].__class__ = _Module
