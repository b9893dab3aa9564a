"""Every setting of a client, declared once.

``Client(**settings)`` and the module-level attributes of ``analytics_vitally``
both fill this dataclass; defaults, environment fallbacks and checks live here.
"""

from __future__ import annotations

import collections.abc
import difflib
import hashlib
import hmac
import ipaddress
import logging
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union, get_args, get_origin, get_type_hints

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from .errors import ConfigurationError
from .messages import MAX_BATCH_MESSAGES

ErrorCallback = Callable[[Exception, List[Dict[str, Any]]], None]
"""``on_error(exception, messages)``: messages are the dicts exactly as sent."""
BeforeSend = Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]
"""``before_send(message) -> message or None``: the wire-form dict about to be encoded; None drops it."""

ENVIRONMENT = {
    "write_key": "VITALLY_WRITE_KEY",
    "subdomain": "VITALLY_SUBDOMAIN",
    "host": "VITALLY_HOST",
    "spool": "VITALLY_SPOOL",
}
"""Settings that fall back to an environment variable when unset."""

BATCH_PATH = "/analytics/v1/batch"

_SUBDOMAIN = re.compile(r"[A-Za-z0-9-]+\Z")


@dataclass
class Settings:
    """A client's settings, each a ``Client`` keyword argument and a module attribute; docs/guides/settings.md
    says what each one does."""

    write_key: Optional[str] = field(default=None, repr=False)
    subdomain: Optional[str] = None
    host: Optional[str] = None
    debug: bool = False
    log_handler: Optional[logging.Handler] = None
    on_error: Optional[ErrorCallback] = None
    before_send: Optional[BeforeSend] = None
    send: bool = True
    sync_mode: bool = False
    max_queue_size: int = 50_000
    upload_size: int = MAX_BATCH_MESSAGES
    upload_interval: float = 0.5
    max_retries: int = 10
    max_retry_time: float = 60.0
    retry_wait: float = 0.5
    timeout: float = 10.0
    proxies: Optional[Dict[str, str]] = field(default=None, repr=False)  # may hold a proxy password
    thread: int = 1
    gzip: bool = False
    max_batch_bytes: int = 500_000
    exit_timeout: float = 5.0
    drain_on_sigterm: bool = True
    spool: Optional[str] = None
    spool_fsync: bool = False
    max_spool_bytes: int = 100_000_000

    def resolved(self) -> Settings:
        """A copy with environment fallbacks applied, normalised and checked; ConfigurationError if unusable.

        The write key loses leading and trailing whitespace (a key pasted from a file often ends
        in a newline); a ``host`` given as the full batch URL loses its ``/analytics/v1/batch``.
        """
        fallbacks: Dict[str, Any] = {
            name: os.environ.get(variable)
            for name, variable in ENVIRONMENT.items()
            if not getattr(self, name) and not (name == "spool" and self.spool == "")  # "": none, whatever the env
        }
        settings = replace(self, **fallbacks)
        settings._check_types()
        if settings.write_key is not None:
            settings.write_key = settings.write_key.strip()
        if settings.host is not None:
            settings.host = _normalized_host(settings.host)
        if settings.spool == "":  # VITALLY_SPOOL= (set but empty) means no spool
            settings.spool = None
        settings._check()
        return settings

    @property
    def url(self) -> str:
        """The batch endpoint these settings send to."""
        if self.host:
            return self.host.rstrip("/") + BATCH_PATH
        return f"https://{self.subdomain}.api.vitally.io{BATCH_PATH}"

    @property
    def fingerprint(self) -> str:
        """Names where these settings send (the endpoint and the write key) without showing the key.

        16 hex digits of an HMAC-SHA-256 keyed by the write key over the endpoint: the same for the
        same key and endpoint, and no help in guessing the key. Spool files and the importer's saved
        progress record it, so neither is ever sent to another Vitally account.
        """
        return hmac.new((self.write_key or "").encode(), self.url.encode(), hashlib.sha256).hexdigest()[:16]

    def _check_types(self) -> None:
        for name, expected in _TYPES.items():
            value = getattr(self, name)
            # bool is an int in Python, but True is no queue size and 1 is no flag.
            wrong = not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)
            if wrong:
                names = " or ".join("None" if kind is type(None) else kind.__name__ for kind in expected)
                raise ConfigurationError(name, f"must be {names}, not {type(value).__name__}")
        if self.on_error is not None and not callable(self.on_error):
            raise ConfigurationError("on_error", "must be a function on_error(exception, messages), or None")
        if self.before_send is not None and not callable(self.before_send):
            raise ConfigurationError(
                "before_send", "must be a function before_send(message) -> message or None, or None"
            )
        for key, value in (self.proxies or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ConfigurationError("proxies", "must map schemes to proxy URLs, both strings")

    def _check(self) -> None:
        if self.subdomain is not None and not _SUBDOMAIN.match(self.subdomain):
            raise ConfigurationError(
                "subdomain",
                f"must be letters, digits and hyphens only (acme for acme.vitally.io), not {self.subdomain!r}",
            )
        if self.host is not None:
            _check_host(self.host)
        if self.spool is not None and self.sync_mode:
            raise ConfigurationError(
                "spool", "cannot be used with sync_mode=True: a sync call delivers before it returns"
            )
        if self.write_key:
            _check_write_key(self.write_key)
        if self.send:
            if not self.write_key:
                raise ConfigurationError(
                    "write_key",
                    "is not set: pass the Analytics API token from Vitally (Settings, Integrations, "
                    "Vitally Analytics API) as write_key or in VITALLY_WRITE_KEY, or set send=False",
                )
            if not self.subdomain and not self.host:
                raise ConfigurationError(
                    "subdomain",
                    "is not set: pass subdomain (acme for acme.vitally.io) or host, or set VITALLY_SUBDOMAIN",
                )
        for name, (low, high) in _INT_RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigurationError(name, f"must be from {low} to {high:,}, not {value}")
        for name in _DURATIONS:
            value = getattr(self, name)
            least = 0.001 if name == "timeout" else 0.0
            if not least <= value <= MAX_SECONDS:  # also false for NaN
                raise ConfigurationError(
                    name, f"must be a number of seconds from {least:g} to {MAX_SECONDS:,.0f}, not {value!r}"
                )


MAX_SECONDS = 86_400.0
"""No duration setting may be longer than a day (and none may be NaN or infinite)."""
MAX_THREADS = 64
"""``thread`` at most: more requests in flight than this only adds load on Vitally."""


def _accepted(hint: Any) -> Optional[Tuple[type, ...]]:
    """The classes a field's annotation admits, for isinstance; None for a callable (checked apart)."""
    kinds: List[type] = []
    for arg in get_args(hint) if get_origin(hint) is Union else (hint,):
        origin = get_origin(arg) or arg
        if origin is collections.abc.Callable:
            return None
        kinds += [origin, int] if origin is float else [origin]  # 10 is a fine number of seconds
    return tuple(kinds)


_TYPES: Dict[str, Tuple[type, ...]] = {
    name: kinds for name, hint in get_type_hints(Settings).items() if (kinds := _accepted(hint)) is not None
}
"""Each setting's accepted types, read from the annotations of ``Settings``."""
_INT_RANGES = {
    "upload_size": (1, MAX_BATCH_MESSAGES),
    "max_queue_size": (1, 10**9),
    "thread": (1, MAX_THREADS),
    "max_batch_bytes": (1, 10**9),
    "max_retries": (0, 10**6),
    "max_spool_bytes": (1 << 16, 10**12),
}
_DURATIONS = ("upload_interval", "max_retry_time", "retry_wait", "timeout", "exit_timeout")
_UNSAFE_IN_URL = re.compile(r"[\\\s\x00-\x1f\x7f]")
_WRITE_KEY = re.compile(r"[\x20-\x7e]+\Z")


def _check_write_key(key: str) -> None:
    """Refuse what cannot go into an HTTP header as it is, without ever showing the key."""
    if _WRITE_KEY.match(key):
        return
    position, bad = next((i, c) for i, c in enumerate(key) if not "\x20" <= c <= "\x7e")
    raise ConfigurationError(
        "write_key",
        f"has the character U+{ord(bad):04X} at position {position}: the Analytics API token is printable "
        "ASCII (check for a line break or a stray character pasted with it)",
    )


def _normalized_host(host: str) -> str:
    trimmed = host.rstrip("/")
    if trimmed.endswith(BATCH_PATH):  # the whole endpoint was given: keep its base
        return trimmed[: -len(BATCH_PATH)]
    return host


def _check_host(host: str) -> None:
    """Judge the address requests will really connect to (parsed by urllib3, as requests does)."""
    shown = _redacted(host)
    if _UNSAFE_IN_URL.search(host):
        raise ConfigurationError("host", f"must not contain spaces, backslashes or control characters: {shown}")
    try:
        parts = parse_url(host)
    except LocationParseError:
        raise ConfigurationError("host", f"is not a valid URL (check the port, 1 to 65535): {shown}") from None
    if parts.scheme not in ("http", "https") or not parts.host or "://" not in host:
        raise ConfigurationError("host", f"must be a URL such as https://proxy.example.com, not {shown}")
    if parts.auth is not None or "@" in (parts.netloc or ""):
        raise ConfigurationError(
            "host", f"must not carry a user name or password (the write key is the credential): {shown}"
        )
    if parts.port is not None and not 1 <= parts.port <= 65535:
        raise ConfigurationError("host", f"has a port outside 1 to 65535: {shown}")
    if parts.query is not None or parts.fragment is not None:
        raise ConfigurationError("host", f"must not have a query or fragment: {shown}")
    if _is_segment(parts.host):
        raise ConfigurationError(
            "host",
            f"is Segment's API ({shown}), and a Vitally write key must never be sent there: leave host unset and "
            "set subdomain (acme for acme.vitally.io) or VITALLY_SUBDOMAIN",
        )
    if parts.scheme == "http" and not _is_loopback(parts.host):
        raise ConfigurationError(
            "host", f"must use https:// (plain http is only allowed for localhost and 127.0.0.1), not {shown}"
        )


def _redacted(host: str) -> str:
    """``host`` for an error message: anything that could be a password replaced by ***."""
    scheme, separator, rest = host.partition("://")
    if not separator:
        scheme, rest = "", host
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return repr(f"{scheme}{separator}{authority}{slash}{path}")


_SEGMENT_HOSTS = ("segment.io", "segment.com", "segmentapis.com")
"""Segment's API domains (api.segment.io, events.eu1.segmentapis.com...): a host there is refused."""


def _is_segment(hostname: str) -> bool:
    name = hostname.lower().rstrip(".")
    return any(name == domain or name.endswith("." + domain) for domain in _SEGMENT_HOSTS)


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False


SETTING_NAMES = tuple(setting.name for setting in fields(Settings))


def unknown_setting(name: str) -> str:
    """``'name'`` with the closest setting's name as a suggestion, for an error about an unknown setting."""
    close = difflib.get_close_matches(name, SETTING_NAMES, n=1, cutoff=0.6)
    return f"{name!r} (did you mean {close[0]!r}?)" if close else f"{name!r} (the settings: {', '.join(SETTING_NAMES)})"


def check_names(caller: str, names: Iterable[str]) -> None:
    """TypeError naming ``caller`` and the closest setting if any of ``names`` is not a setting."""
    unknown = [name for name in names if name not in _NAMES]
    if unknown:
        raise TypeError(f"{caller} got an unknown setting {unknown_setting(unknown[0])}")


_NAMES = frozenset(SETTING_NAMES)


__all__ = ["ENVIRONMENT", "SETTING_NAMES", "BeforeSend", "ErrorCallback", "Settings", "check_names", "unknown_setting"]
