"""Every setting of a client, declared once.

``Client(**settings)`` and the module-level attributes of ``analytics_vitally``
both fill this dataclass; defaults, environment fallbacks and checks live here.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .messages import MAX_BATCH_MESSAGES

ErrorCallback = Callable[[Exception, List[Dict[str, Any]]], None]
"""``on_error(exception, messages)``: messages are the dicts exactly as sent."""

ENVIRONMENT = {
    "write_key": "VITALLY_WRITE_KEY",
    "subdomain": "VITALLY_SUBDOMAIN",
    "host": "VITALLY_HOST",
}
"""Settings that fall back to an environment variable when unset."""

BATCH_PATH = "/analytics/v1/batch"

_SUBDOMAIN = re.compile(r"[A-Za-z0-9-]+\Z")


@dataclass
class Settings:
    """A client's settings; see the README's "Settings" table for each one."""

    write_key: Optional[str] = field(default=None, repr=False)
    subdomain: Optional[str] = None
    host: Optional[str] = None
    debug: bool = False
    log_handler: Optional[logging.Handler] = None
    on_error: Optional[ErrorCallback] = None
    send: bool = True
    sync_mode: bool = False
    max_queue_size: int = 50_000
    upload_size: int = MAX_BATCH_MESSAGES
    upload_interval: float = 0.5
    max_retries: int = 10
    max_retry_time: float = 60.0
    retry_wait: float = 0.5
    timeout: float = 10.0
    proxies: Optional[Dict[str, str]] = None
    thread: int = 1
    gzip: bool = False
    max_batch_bytes: int = 500_000
    exit_timeout: float = 5.0

    def resolved(self) -> Settings:
        """A copy with environment fallbacks applied, checked; ConfigurationError if unusable."""
        fallbacks: Dict[str, Any] = {
            name: os.environ.get(variable) for name, variable in ENVIRONMENT.items() if not getattr(self, name)
        }
        settings = replace(self, **fallbacks)
        settings._check()
        return settings

    @property
    def url(self) -> str:
        """The batch endpoint these settings send to."""
        if self.host:
            return self.host.rstrip("/") + BATCH_PATH
        return f"https://{self.subdomain}.api.vitally.io{BATCH_PATH}"

    def _check(self) -> None:
        if self.subdomain is not None and not _SUBDOMAIN.match(self.subdomain):
            raise ConfigurationError(
                "subdomain",
                f"must be letters, digits and hyphens only (acme for acme.vitally.io), not {self.subdomain!r}",
            )
        if self.host is not None:
            _check_host(self.host)
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
        if not 1 <= self.upload_size <= MAX_BATCH_MESSAGES:
            raise ConfigurationError("upload_size", f"must be from 1 to {MAX_BATCH_MESSAGES}, not {self.upload_size}")
        for name in ("max_queue_size", "thread", "max_batch_bytes"):
            if getattr(self, name) < 1:
                raise ConfigurationError(name, f"must be at least 1, not {getattr(self, name)}")
        for name in ("upload_interval", "max_retries", "max_retry_time", "retry_wait", "timeout", "exit_timeout"):
            if getattr(self, name) < 0:
                raise ConfigurationError(name, f"must not be negative, not {getattr(self, name)}")


def _check_host(host: str) -> None:
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError("host", f"must be a URL such as https://proxy.example.com, not {host!r}")
    if parts.query or parts.fragment:
        raise ConfigurationError("host", f"must not have a query or fragment: {host!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigurationError(
            "host", f"must use https:// (plain http is only allowed for localhost and 127.0.0.1), not {host!r}"
        )


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


SETTING_NAMES = tuple(setting.name for setting in fields(Settings))

__all__ = ["ENVIRONMENT", "ErrorCallback", "SETTING_NAMES", "Settings"]
