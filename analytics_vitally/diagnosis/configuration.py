"""The settings in force and where each came from: an argument, a module attribute, the environment
(``settings.ENVIRONMENT``), or the default (``Settings``' own). The settings are not listed here:
every name, default and environment variable is read from ``settings.py``."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional

from ..errors import ConfigurationError
from ..settings import ENVIRONMENT, SETTING_NAMES, Settings
from .network import without_password
from .report import OK, PROBLEM, WARNING, Findings

TOPIC = "settings"
_DEFAULTS = Settings()


@dataclass
class Chosen:
    """The settings ``doctor`` checks, resolved as a client resolves them."""

    settings: Optional[Settings]
    """As a client would use them; None when they are unusable (a ``ConfigurationError``)."""
    reachable: Optional[Settings]
    """Enough to look at the network with (``send=False``: no write key needed); None without a
    subdomain or host, or when even those are unusable."""
    spool: Optional[str]
    """The spool directory, if one is set (even when the settings are unusable)."""


def from_arguments(
    given: Mapping[str, Any], module: Mapping[str, Any], argument: Callable[[str], str], found: Findings
) -> Chosen:
    """The settings ``given`` as arguments (``argument(name)`` says how one is named, an option or a
    keyword), the rest from ``module`` (the package's attributes, or nothing), then the environment."""
    values = {name: given.get(name, module.get(name, getattr(_DEFAULTS, name))) for name in SETTING_NAMES}
    origins: Dict[str, str] = {}
    for name in SETTING_NAMES:
        if name in given:
            origins[name] = f"from {argument(name)}"
        elif name in module and not _same(module[name], getattr(_DEFAULTS, name)):
            origins[name] = f"from module attribute analytics_vitally.{name}"
        else:
            origins[name] = "default"
    return _resolve(Settings(**values), origins, found)


def from_client(settings: Settings, found: Findings) -> Chosen:
    """A client's settings, already resolved: which came from the environment can only be inferred."""
    origins: Dict[str, str] = {}
    for name in SETTING_NAMES:
        value = getattr(settings, name)
        if _same(value, getattr(_DEFAULTS, name)):
            origins[name] = "default"
        elif name in ENVIRONMENT and os.environ.get(ENVIRONMENT[name]) and _environment_value(name) == value:
            origins[name] = f"from environment variable {ENVIRONMENT[name]}, or given to the Client as the same value"
        else:
            origins[name] = "given to the Client"
    # resolved() would apply the environment again: the client's values are final as they are.
    _describe(settings, origins, found)
    return Chosen(settings, settings if settings.host or settings.subdomain else None, settings.spool)


def _resolve(raw: Settings, origins: Dict[str, str], found: Findings) -> Chosen:
    for name, variable in ENVIRONMENT.items():  # the rule of Settings.resolved: unset values fall back
        value = getattr(raw, name)
        if not value and not (name == "spool" and value == "") and os.environ.get(variable):
            origins[name] = f"from environment variable {variable}"
    try:
        settings: Optional[Settings] = raw.resolved()
    except ConfigurationError as error:
        settings = None
        found.add(TOPIC, PROBLEM, f"the settings are unusable: {error}", _fix(error))
    try:
        reachable: Optional[Settings] = replace(raw, send=False, sync_mode=False, spool="").resolved()
    except ConfigurationError:
        reachable = None
    if reachable is not None and not (reachable.host or reachable.subdomain):
        reachable = None
    shown = settings
    if shown is None:  # as given, the environment's values filled in
        fallbacks: Dict[str, Any] = {
            name: os.environ.get(variable) for name, variable in ENVIRONMENT.items() if not getattr(raw, name)
        }
        shown = replace(raw, **fallbacks)
    _describe(shown, origins, found, fingerprint=settings is not None)
    return Chosen(settings, reachable, shown.spool or None)


def _fix(error: ConfigurationError) -> str:
    variable = ENVIRONMENT.get(error.setting)
    where = f", or the environment variable {variable}" if variable else ""
    return f"set {error.setting} as the message says (a Client argument, analytics_vitally.{error.setting}{where})"


def _describe(settings: Settings, origins: Dict[str, str], found: Findings, fingerprint: bool = True) -> None:
    """One finding per setting not at its default, one for the rest, and what is odd about them."""
    defaults: List[str] = []
    for name in SETTING_NAMES:
        value = getattr(settings, name)
        if origins[name] == "default" and _same(value, getattr(_DEFAULTS, name)):
            defaults.append(name)
            continue
        text = f"{name} = {_shown(name, value, settings if fingerprint else None)} ({origins[name]})"
        variable = ENVIRONMENT.get(name)
        overridden = variable and os.environ.get(variable) and not origins[name].startswith("from environment")
        if overridden and _environment_value(name) != value:
            text += f"; {variable} is set too, and not used"
        found.add(TOPIC, OK, text)
    found.add(TOPIC, OK, f"at their defaults: {', '.join(defaults)}" if defaults else "no setting at its default")
    key = settings.write_key or ""
    if key[:6].lower() == "basic ":
        found.add(
            TOPIC,
            WARNING,
            "write_key begins with 'Basic ': the client adds that itself, so Vitally gets 'Basic Basic ...'",
            "set write_key to the Analytics API token alone, as Vitally shows it (not base64-encoded again)",
        )
    if not settings.send:
        found.add(
            TOPIC,
            PROBLEM,
            "send = False: every call is checked and counted, and nothing is sent",
            "remove send=False (it is meant for tests and development)",
        )


def _shown(name: str, value: Any, settings: Optional[Settings]) -> str:
    """A setting's value fit to print: the write key only as a fingerprint (``Settings.fingerprint``, as
    ``analytics-vitally spool`` shows it), proxy passwords hidden."""
    if name == "write_key":
        if not value:
            return "not set"
        return f"set (fingerprint {settings.fingerprint} with the endpoint)" if settings is not None else "set"
    if name == "proxies" and value:
        return repr({scheme: without_password(url) for scheme, url in value.items()})
    if callable(value) and not isinstance(value, type):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    return repr(value)


def _environment_value(name: str) -> Any:
    """The value the environment variable of ``name`` gives, as ``Settings.resolved`` reads it (None if unusable)."""
    given: Dict[str, Any] = {name: os.environ.get(ENVIRONMENT[name])}
    try:
        return getattr(Settings(send=False, **given).resolved(), name)
    except ConfigurationError:
        return None


def _same(value: Any, default: Any) -> bool:
    return value is default or (type(value) is type(default) and value == default)


__all__ = ["Chosen", "from_arguments", "from_client"]
