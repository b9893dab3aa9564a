"""Vitally's message rules, written once.

The client, the importer and the local receiver all check messages with
``problems()`` against ``RULES``, the one table of message types and their
fields (from Vitally's Analytics API pages: Batch, Account, User, Track,
Unlink, Organization, Custom Object Instances).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, List, Mapping

from .encoding import format_timestamp, parse_timestamp
from .errors import InvalidMessageError, InvalidTypeError

MAX_BATCH_MESSAGES = 100
"""Vitally's documented maximum number of messages in one batch request."""


@dataclass(frozen=True)
class Rule:
    """The fields one message type takes, by their wire names."""

    ids: tuple[str, ...] = ()
    """ID fields that must be present."""
    one_of: tuple[str, ...] = ()
    """ID fields of which at least one must be present."""
    one_of_hint: str = ""
    """What to tell a caller who gave none of ``one_of``."""
    optional_ids: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()
    """Object fields that must be present (``{}`` is fine)."""
    optional_objects: tuple[str, ...] = ()
    strings: tuple[str, ...] = ()
    """Non-empty string fields that must be present."""
    optional_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Derived once per rule, so checking a message does no tuple arithmetic.
        derived = {
            "all_ids": self.ids + self.one_of + self.optional_ids,
            "string_fields": self.ids + self.one_of + self.optional_ids + self.strings,
            "object_fields": self.objects + self.optional_objects,
            "required_ids": frozenset(self.ids),
            "one_of_set": frozenset(self.one_of),
            "fields": frozenset(
                (
                    "type",
                    "messageId",
                    "timestamp",
                    *self.ids,
                    *self.one_of,
                    *self.optional_ids,
                    *self.objects,
                    *self.optional_objects,
                    *self.strings,
                    *self.optional_strings,
                )
            ),
        }
        for key, value in derived.items():
            object.__setattr__(self, key, value)

    all_ids: tuple[str, ...] = field(init=False, default=(), repr=False)
    """Every ID field of the type."""
    string_fields: tuple[str, ...] = field(init=False, default=(), repr=False)
    """Fields whose value, when present, must be a non-empty string."""
    object_fields: tuple[str, ...] = field(init=False, default=(), repr=False)
    required_ids: frozenset[str] = field(init=False, default=frozenset(), repr=False)
    one_of_set: frozenset[str] = field(init=False, default=frozenset(), repr=False)
    fields: frozenset[str] = field(init=False, default=frozenset(), repr=False)
    """Every field a message of the type may have."""


RULES: dict[str, Rule] = {
    "organization": Rule(ids=("organizationId",), optional_objects=("traits",)),
    "account": Rule(ids=("accountId",), optional_ids=("organizationId",), optional_objects=("traits",)),
    "user": Rule(
        ids=("userId",),
        one_of=("accountId", "organizationId"),
        one_of_hint="pass the account the user belongs to, or their organization",
        objects=("traits",),
    ),
    "track": Rule(
        strings=("event",),
        objects=("properties",),
        one_of=("userId", "accountId", "organizationId"),
        one_of_hint="say whose event it is",
    ),
    "unlink": Rule(ids=("userId", "accountId")),
    "customobjectinstance": Rule(
        ids=("externalId", "customObjectId"),
        one_of=("accountId", "organizationId"),
        one_of_hint="pass the account or organization the record belongs to",
        objects=("traits",),
        optional_strings=("name",),
    ),
}
"""Every message type Vitally takes, and its fields."""

_REQUIRED = {kind: f"is required for a {kind} message" for kind in RULES}

_PARAMETERS = {
    "userId": "user_id",
    "accountId": "account_id",
    "organizationId": "organization_id",
    "externalId": "external_id",
    "customObjectId": "custom_object_id",
    "messageId": "message_id",
}


def parameter(field: str) -> str:
    """The Python parameter that sets wire field ``field`` (``userId`` -> ``user_id``)."""
    return _PARAMETERS.get(field, field)


_WIRE_FIELDS = {parameter: field for field, parameter in _PARAMETERS.items()}


def field_of(parameter: str) -> str:
    """The wire field a Python parameter sets (``user_id`` -> ``userId``); other names are their own."""
    return _WIRE_FIELDS.get(parameter, parameter)


def wire_field(field: str) -> str:
    """The name a wire field goes by in errors about wire-form messages: itself."""
    return field


_ABSENT = object()


_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[+-]00:?00)\Z")


def normalize_ids(message: dict[str, Any], name: Callable[[str], str] = parameter) -> None:
    """Turn integer IDs into strings, in place (older Vitally pages allowed numbers).

    InvalidMessageError, naming the field with ``name``, for an integer too long to
    write in digits (Python's int string limit, 4300 digits unless changed).
    """
    kind = message.get("type")
    rule = RULES.get(kind) if isinstance(kind, str) else None
    if rule is not None:
        for field in rule.all_ids:
            if type(message.get(field)) is int:
                try:
                    message[field] = str(message[field])
                except ValueError:
                    raise InvalidMessageError(name(field), _ID_TOO_LONG) from None


_ID_TOO_LONG = "is an integer too long to be an ID (more than Python's int string limit, 4300 digits by default)"


def complete(message: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of wire-form ``message`` with what the client's methods would fill in filled in.

    Top-level ``None`` fields are left out, an absent ``traits``/``properties`` becomes
    ``{}``, a ``timestamp`` (any ISO 8601 string, or a datetime) is written in Vitally's
    UTC form. Raises InvalidMessageError for an unreadable timestamp; the rest is left for
    ``problems()`` to judge.
    """
    if message.__class__ is not dict and not isinstance(message, Mapping):  # the exact type first: cheaper
        raise InvalidTypeError("message", f"must be a dict of Vitally's wire fields, not {type(message).__name__}")
    try:
        filled = {key: value for key, value in message.items() if value is not None}
        kind = filled.get("type")
        if isinstance(kind, str) and kind.__class__ is not str:  # its own __hash__ or __eq__ may raise
            kind = filled["type"] = str.__str__(kind)
    except Exception as error:  # a Mapping whose items() or keys raise: only our errors leave a call
        raise InvalidTypeError("message", f"could not be read: {type(error).__name__}: {error}") from None
    rule = RULES.get(kind) if isinstance(kind, str) else None
    if rule is not None:
        for key in rule.object_fields:
            filled.setdefault(key, {})
    timestamp = filled.get("timestamp")
    try:
        if isinstance(timestamp, str):
            filled["timestamp"] = parse_timestamp(timestamp)
        elif isinstance(timestamp, datetime):
            filled["timestamp"] = format_timestamp(timestamp)
    except ValueError as error:
        raise InvalidMessageError(
            "timestamp", f"is not a valid ISO 8601 time (such as 2018-05-15T12:31:12.123Z): {timestamp!r} ({error})"
        ) from None
    return filled


def problems(message: Any, name: Callable[[str], str] = wire_field, stamped: bool = False) -> List[InvalidMessageError]:
    """Every way ``message`` (a wire-format dict) breaks Vitally's rules; empty if none.

    ``name`` turns a wire field name into the name the errors should use. ``stamped``
    says the caller made ``messageId`` and ``timestamp`` itself, so they need no check.
    """
    if not isinstance(message, dict):
        return [InvalidTypeError("message", "must be a JSON object")]
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in RULES:
        return [InvalidMessageError("type", f"must be one of {', '.join(RULES)}, not {kind!r}")]
    rule = RULES[kind]
    required = _REQUIRED[kind]
    found: List[InvalidMessageError] = []
    if not rule.required_ids <= message.keys():
        found += [InvalidMessageError(name(key), required) for key in rule.ids if key not in message]
    if rule.one_of and rule.one_of_set.isdisjoint(message):
        first, *others = [name(key) for key in rule.one_of]
        found.append(InvalidMessageError(first, f"or {' or '.join(others)} {required}: {rule.one_of_hint}"))
    for key in rule.string_fields:
        value = message.get(key, _ABSENT)
        if value.__class__ is str and value:
            continue
        if value is _ABSENT:
            if key in rule.strings:
                found.append(InvalidMessageError(name(key), required))
        elif not isinstance(value, str):
            wanted = "a string or an integer (IDs are sent as strings)" if key in rule.all_ids else "a string"
            found.append(InvalidTypeError(name(key), f"must be {wanted}, not {type(value).__name__}"))
        elif not str.__len__(value):  # str's own: a subclass's __bool__ may raise
            found.append(InvalidMessageError(name(key), "must not be empty"))
    for key in rule.optional_strings:
        value = message.get(key)
        if value is not None and not isinstance(value, str):
            found.append(InvalidTypeError(name(key), f"must be a string, not {type(value).__name__}"))
    for key in rule.object_fields:
        value = message.get(key)
        if value.__class__ is dict:
            continue
        if value is None:
            if key in rule.objects:
                found.append(InvalidMessageError(name(key), f"{required} (it may be {{}})"))
        elif not isinstance(value, dict):
            found.append(InvalidTypeError(name(key), f"must be a dict, not {type(value).__name__}"))
    if not stamped:
        found += _stamp_problems(message, name)
    if not message.keys() <= rule.fields:
        found += [
            InvalidMessageError(key, f"is not a field of a {kind} message")
            for key in sorted(map(str, message.keys() - rule.fields))
        ]
    return found


def _stamp_problems(message: dict[str, Any], name: Callable[[str], str]) -> List[InvalidMessageError]:
    found: List[InvalidMessageError] = []
    message_id = message.get("messageId")
    timestamp = message.get("timestamp")
    if message_id is None and timestamp is None:
        found.append(InvalidMessageError(name("messageId"), "or timestamp is required"))
    if message_id is not None and (not isinstance(message_id, str) or not message_id):
        found.append(InvalidTypeError(name("messageId"), "must be a non-empty string"))
    if timestamp is not None and (not isinstance(timestamp, str) or not _TIMESTAMP.match(timestamp)):
        found.append(
            InvalidMessageError(
                name("timestamp"), f"must be ISO 8601 in UTC such as 2018-05-15T12:31:12.123Z, not {timestamp!r}"
            )
        )
    return found


def check(message: dict[str, Any], name: Callable[[str], str] = wire_field, stamped: bool = False) -> None:
    """Raise the first of ``problems(message, name, stamped)``, if there is one."""
    found = problems(message, name, stamped)
    if found:
        raise found[0]


__all__ = [
    "MAX_BATCH_MESSAGES",
    "RULES",
    "Rule",
    "check",
    "complete",
    "field_of",
    "normalize_ids",
    "parameter",
    "problems",
    "wire_field",
]
