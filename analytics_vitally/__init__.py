"""Send product data to Vitally's Analytics API, Segment-style.

    import analytics_vitally as analytics
    analytics.write_key = "..."      # the Analytics API token from Vitally
    analytics.subdomain = "acme"     # for https://acme.vitally.io
    analytics.track("32", "scored-goal", {"minute": 14})
    analytics.flush()

The module-level functions are thin proxies to a default ``Client`` made from
the module-level settings at the first call. Changing a setting after that
warns (once) and does not reach it: call ``configure(...)``, which makes the
default client again. Setting a name that is no setting raises AttributeError
naming the closest one. Settings left as None fall back to
``VITALLY_WRITE_KEY``, ``VITALLY_SUBDOMAIN``, ``VITALLY_HOST`` and
``VITALLY_SPOOL``. The settings (module attributes, and ``Client`` keyword
arguments; docs/guides/settings.md says what each does):
"""

from __future__ import annotations

import inspect
import logging
import sys
import types
import warnings
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from . import default
from .client import Client, Message, Result
from .delivery import Stats
from .errors import (
    AnalyticsError,
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    InvalidMessageError,
    InvalidTypeError,
)
from .otel import instrument_metrics
from .scope import context
from .settings import SETTING_NAMES, BeforeSend, ErrorCallback, Settings, check_names, unknown_setting
from .version import VERSION

if TYPE_CHECKING:
    from typing import Concatenate, ParamSpec, TypeVar

    from .aio import AsyncClient
    from .diagnosis import doctor
    from .integrations import flush_after

    P = ParamSpec("P")
    R = TypeVar("R")

__version__ = VERSION

# The settings of the default client (see Settings for each one's meaning).
_defaults = Settings()
write_key: Optional[str] = _defaults.write_key
subdomain: Optional[str] = _defaults.subdomain
host: Optional[str] = _defaults.host
debug: bool = _defaults.debug
log_handler: Optional[logging.Handler] = _defaults.log_handler
on_error: Optional[ErrorCallback] = _defaults.on_error
before_send: Optional[BeforeSend] = _defaults.before_send
send: bool = _defaults.send
sync_mode: bool = _defaults.sync_mode
max_queue_size: int = _defaults.max_queue_size
upload_size: int = _defaults.upload_size
upload_interval: float = _defaults.upload_interval
max_retries: int = _defaults.max_retries
max_retry_time: float = _defaults.max_retry_time
retry_wait: float = _defaults.retry_wait
timeout: float = _defaults.timeout
proxies: Optional[Dict[str, str]] = _defaults.proxies
thread: int = _defaults.thread
gzip: bool = _defaults.gzip
max_batch_bytes: int = _defaults.max_batch_bytes
exit_timeout: float = _defaults.exit_timeout
drain_on_sigterm: bool = _defaults.drain_on_sigterm
spool: Optional[str] = _defaults.spool
spool_fsync: bool = _defaults.spool_fsync
max_spool_bytes: int = _defaults.max_spool_bytes


def default_client() -> Client:
    """The client behind the module-level functions, made from the module's settings on first use."""
    client = default.client
    if client is None:
        module = globals()
        client = default.get(lambda: default.make({name: module[name] for name in SETTING_NAMES}))
    return client


def configure(**settings: Any) -> Client:
    """Set module settings and make the default client now; ConfigurationError if they are unusable.

    Call it at start-up so a missing or bad setting fails there, not in every request that
    tracks. A default client made earlier is shut down (within ``exit_timeout``) and replaced.
    Inside ``testing.capture()`` the client it makes keeps its messages in memory, and the end of
    the block puts back the settings and the default client from before it.

        analytics.configure(write_key=os.environ["VITALLY_WRITE_KEY"], subdomain="acme")
    """
    check_names("configure()", settings)
    module = globals()
    with default.lock.get():  # made under it: a capture() opening or closing now cannot get the other kind
        client = default.make({name: settings.get(name, module[name]) for name in SETTING_NAMES})
        module.update(settings)
        previous = default.swap(client)
    if previous is not None:
        previous.shutdown(timeout=previous.settings.exit_timeout)
    return client


def _proxy(method: Callable[Concatenate[Client, P], R]) -> Callable[P, R]:
    """A module function calling ``method`` on the default client, which reads as a module function
    in ``help()`` and the shell: its signature without ``self``, examples written ``analytics.``."""
    name = method.__name__

    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return getattr(default_client(), name)(*args, **kwargs)  # type: ignore[no-any-return]

    signature = inspect.signature(method)
    call.__name__ = call.__qualname__ = name
    call.__module__ = __name__
    call.__doc__ = (method.__doc__ or "").replace("client.", "analytics.")
    call.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])  # type: ignore[attr-defined]
    call.__annotations__ = {key: value for key, value in method.__annotations__.items() if key != "self"}
    return call


organization = _proxy(Client.organization)
group = _proxy(Client.group)
identify = _proxy(Client.identify)
track = _proxy(Client.track)
unlink = _proxy(Client.unlink)
custom_object_instance = _proxy(Client.custom_object_instance)
enqueue = _proxy(Client.enqueue)


def flush(timeout: Optional[float] = None) -> bool:
    """Wait until every message queued so far was sent or failed; False if ``timeout`` passed first.

        analytics.flush(timeout=5)
    """
    return default.flush(timeout)


def shutdown(timeout: Optional[float] = None) -> bool:
    """Deliver what is queued and stop the default client's threads; False if ``timeout`` passed first.

        analytics.shutdown(timeout=5)
    """
    client = default.client
    return True if client is None else client.shutdown(timeout)


def join() -> None:
    """Deliver what is queued and stop the default client's threads.

        analytics.join()
    """
    shutdown()


def stats() -> Stats:
    """The default client's counters (all zero before the first call).

        analytics.stats().sent
    """
    client = default.client
    return Stats() if client is None else client.stats()



class _Module(types.ModuleType):
    """The package as a module whose settings are checked when set: a typo raises, a late change warns."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in SETTING_NAMES:
            if default.client is not None and not default.told_late and value is not getattr(self, name, None):
                _warn_late(name)
        elif not name.startswith("_") and not isinstance(value, types.ModuleType) and name not in self.__dict__:
            raise AttributeError(f"analytics_vitally has no setting {unknown_setting(name)}")
        super().__setattr__(name, value)


def _warn_late(name: str) -> None:
    default.told_late = True
    warnings.warn(
        f"analytics_vitally.{name} was changed after the default client was made, which keeps the settings it was "
        f"made with: call analytics_vitally.configure({name}=...) to make it again with the new value (said once "
        "per default client)",
        RuntimeWarning,
        stacklevel=3,
    )


def __getattr__(name: str) -> Any:
    """``AsyncClient`` and ``flush_after`` need asyncio, ``doctor`` its checks: loaded at first use, not with
    the package."""
    if name == "AsyncClient":
        from .aio import AsyncClient

        return AsyncClient
    if name == "doctor":
        from .diagnosis import doctor

        return doctor
    if name == "flush_after":
        from .integrations import flush_after

        return flush_after
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    """The public names only: the API, the settings, the version."""
    return sorted({*__all__, *SETTING_NAMES, "__version__"})


__all__ = [
    "AnalyticsError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConfigurationError",
    "DeliveryError",
    "InvalidMessageError",
    "InvalidTypeError",
    "Message",
    "Result",
    "Settings",
    "Stats",
    "configure",
    "context",
    "custom_object_instance",
    "default_client",
    "doctor",
    "enqueue",
    "flush",
    "flush_after",
    "group",
    "identify",
    "instrument_metrics",
    "join",
    "organization",
    "shutdown",
    "stats",
    "track",
    "unlink",
]

__doc__ = (__doc__ or "") + "".join(f"\n    {name} = {getattr(_defaults, name)!r}" for name in SETTING_NAMES) + "\n"
sys.modules[__name__].__class__ = _Module
