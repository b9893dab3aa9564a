"""Segment's ``Client``: each of Segment's calls made Vitally's messages (the rules: the package docstring)."""

from __future__ import annotations

import weakref
from datetime import datetime
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .. import client as vitally
from ..encoding import encode, now_timestamp
from ..errors import InvalidMessageError, InvalidTypeError
from ..messages import check, parameter
from ..settings import SETTING_NAMES, check_names
from . import accounts
from .accounts import Accounts, report_held
from .arguments import (
    POSITIONAL,
    SEGMENT_ONLY,
    as_id,
    as_object,
    as_text,
    cleaned,
    derived_id,
    log,
    moment,
    someone,
    vitally_settings,
)

Message = Dict[str, Any]
Result = Tuple[bool, Message]


class Client:
    """Segment's ``Client``, sending to Vitally through an ``analytics_vitally.Client``.

        client = Client("my-token", subdomain="acme")
        client.track("32", "scored-goal", {"minute": 14})
        client.flush()

    Positional parameters in Segment's order (``write_key, host, debug, max_queue_size, send,
    on_error, ...``); the settings of ``analytics_vitally`` are keywords. ``client.client`` is
    the Vitally client underneath (its ``stats()``, ``send_now()``...); a setting reads as an
    attribute (``client.write_key``, ``client.debug``).
    """

    log = log

    def __init__(self, *args: Any, **settings: Any) -> None:
        if len(args) > len(POSITIONAL):
            raise TypeError(f"Client() takes at most {len(POSITIONAL)} positional arguments ({len(args)} given)")
        for name, value in zip(POSITIONAL, args):
            if name in settings:
                raise TypeError(f"Client() got multiple values for argument {name!r}")
            settings[name] = value
        segment = {name: settings.pop(name) for name in SEGMENT_ONLY if name in settings}
        check_names("Client()", settings)
        self.client = vitally.Client(**vitally_settings(settings, segment))
        """The ``analytics_vitally.Client`` every call goes through."""
        self._segment = {**SEGMENT_ONLY, **segment}
        self._told: set[str] = set()
        self._accounts = Accounts()
        weakref.finalize(self, report_held, self._accounts)
        self._track = self.client.track
        self._identify = self.client.identify
        self._group = self.client.group

    def __repr__(self) -> str:
        return f"<analytics_vitally.segment.Client over {self.client!r}>"

    def __getattr__(self, name: str) -> Any:
        """A setting, as Segment's client has them as attributes (``client.write_key``, ``client.gzip``)."""
        if name in _SETTINGS:
            return getattr(self.client.settings, name)
        if name in SEGMENT_ONLY:
            return self._segment[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # Segment's calls. -------------------------------------------------------------------

    def track(
        self,
        user_id: Any = None,
        event: Optional[str] = None,
        properties: Optional[Message] = None,
        context: Optional[Message] = None,
        timestamp: Optional[datetime] = None,
        anonymous_id: Any = None,
        integrations: Optional[Message] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """A ``track`` of the user; ``context["groupId"]`` becomes its account.

            client.track("32", "scored-goal", {"minute": 14}, context={"groupId": "acct-1"})
        """
        if context is None and integrations is None and message_id is None and user_id.__class__ is str and user_id:
            try:  # the common call, quickly; a refused one goes the long way, to be cleaned or named
                queued, message = self._track(user_id, event, properties or None, timestamp=moment(timestamp))
            except InvalidMessageError:
                queued, message = self._event(user_id, event, properties, None, timestamp, None, None, None)
        else:
            queued, message = self._event(
                user_id, event, properties, context, timestamp, anonymous_id, integrations, message_id
            )
        return queued, {
            "type": "track",
            "userId": message.get("userId") or shown_id(user_id),
            "anonymousId": shown_id(anonymous_id),
            "event": event,
            "properties": message.get("properties", properties or {}),
            "context": context or {},
            "integrations": integrations or {},
            "timestamp": message["timestamp"],
            "messageId": message["messageId"],
        }

    def page(
        self,
        user_id: Any = None,
        category: Optional[str] = None,
        name: Optional[str] = None,
        properties: Optional[Message] = None,
        context: Optional[Message] = None,
        timestamp: Optional[datetime] = None,
        anonymous_id: Any = None,
        integrations: Optional[Message] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """A ``track`` named ``Viewed {category} {name} Page`` (``Loaded a Page`` without a name).

            client.page("32", "Docs", "Install", {"path": "/docs/install"})
        """
        return self._view("page", user_id, category, name, properties, context, timestamp, anonymous_id,
                          integrations, message_id)  # fmt: skip

    def screen(
        self,
        user_id: Any = None,
        category: Optional[str] = None,
        name: Optional[str] = None,
        properties: Optional[Message] = None,
        context: Optional[Message] = None,
        timestamp: Optional[datetime] = None,
        anonymous_id: Any = None,
        integrations: Optional[Message] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """A ``track`` named ``Viewed {category} {name} Screen`` (``Loaded a Screen`` without a name).

            client.screen("32", name="Settings")
        """
        return self._view("screen", user_id, category, name, properties, context, timestamp, anonymous_id,
                          integrations, message_id)  # fmt: skip

    def identify(
        self,
        user_id: Any = None,
        traits: Optional[Message] = None,
        context: Optional[Message] = None,
        timestamp: Optional[datetime] = None,
        anonymous_id: Any = None,
        integrations: Optional[Message] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """A ``user`` in the account of ``context["groupId"]`` or of the user's last ``group()``; else held.

            client.identify("32", {"email": "messi@example.com"}, context={"groupId": "acct-1"})
        """
        traits = as_object("traits", traits)
        groups = as_object("context", context).get("groupId")
        sent: Message = {}
        queued = True
        if self._known(user_id, anonymous_id) and self._routed(integrations):
            key = as_id("user_id", user_id)
            assert key is not None
            account = self._accounts.account_of(key) if groups is None else groups
            if account is None:
                sent = self._hold(key, traits, message_id, timestamp)
            else:
                held = self._accounts.held(key)
                queued, sent = self._send(
                    self._identify, "traits", _IN_CONTEXT, key, {**held, **traits} if held else traits,
                    account_id=account, timestamp=moment(timestamp),
                    message_id=message_id if message_id is None else as_text(message_id),
                )  # fmt: skip
                self._accounts.link(key, sent["accountId"])
        return queued, {
            "type": "identify",
            "userId": shown_id(user_id),
            "anonymousId": shown_id(anonymous_id),
            "traits": sent.get("traits", traits),
            "context": context or {},
            "integrations": integrations or {},
            **stamps(sent, message_id, timestamp),
        }

    def group(
        self,
        user_id: Any = None,
        group_id: Any = None,
        traits: Optional[Message] = None,
        context: Optional[Message] = None,
        timestamp: Optional[datetime] = None,
        anonymous_id: Any = None,
        integrations: Optional[Message] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """An ``account`` (group_id, traits) and a ``user`` linking the user to it.

            client.group("32", "acct-1", {"name": "Argentina"})
        """
        traits = as_object("traits", traits)
        as_object("context", context)
        account_id = as_id("group_id", group_id)
        if account_id is None:
            raise InvalidMessageError("group_id", "is required: the ID of the account (Segment's group)")
        base = vitally._new_message_id() if message_id is None else as_text(message_id)
        queued, sent = True, unsent(base, timestamp)
        key = as_id("user_id", user_id) if someone(user_id, anonymous_id) else None
        if self._routed(integrations):
            when = moment(timestamp)
            queued, sent = self._send(
                self._group, "traits", _AS_GROUP, account_id, traits, timestamp=when,
                message_id=derived_id(base, "account"),
            )  # fmt: skip
            if key is not None:
                held = self._accounts.held(key)
                linked, _ = self._send(
                    self._identify, "traits", _AS_GROUP, key, held, account_id=account_id, timestamp=when,
                    message_id=derived_id(base, "user"),
                )  # fmt: skip
                self._accounts.link(key, sent["accountId"])
                queued = queued and linked
        return queued, {
            "type": "group",
            "userId": shown_id(user_id),
            "anonymousId": shown_id(anonymous_id),
            "groupId": group_id,
            "traits": sent.get("traits", traits),
            "context": context or {},
            "integrations": integrations or {},
            "timestamp": sent["timestamp"],
            "messageId": base,
        }

    def alias(
        self,
        previous_id: Any = None,
        user_id: Any = None,
        context: Optional[Message] = None,
        timestamp: Optional[datetime] = None,
        integrations: Optional[Message] = None,
        message_id: Optional[str] = None,
    ) -> Result:
        """Nothing is sent: Vitally keys users by your own ID (a warning, once per client).

            client.alias("anonymous-7", "32")
        """
        for name, value in (("previous_id", previous_id), ("user_id", user_id)):
            if as_id(name, value) is None:
                raise InvalidMessageError(name, "is required")
        as_object("context", context)
        if self._routed(integrations):
            self._warn_once(
                "alias", "alias() sends nothing to Vitally, which keys users by your own ID: identify() the user "
                "under the ID you keep (said once per client)"
            )  # fmt: skip
        return True, {
            "type": "alias",
            "previousId": shown_id(previous_id),
            "userId": shown_id(user_id),
            "context": context or {},
            "integrations": integrations or {},
            **unsent(message_id, timestamp),
        }

    # Segment's lifecycle, bounded as Vitally's client is. -------------------------------

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every message queued so far was sent or failed; False if ``timeout`` passed first."""
        return self.client.flush(timeout)

    def join(self) -> None:
        """Deliver what is queued and stop the worker threads."""
        self.client.join()

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Deliver what is queued and stop the worker threads; False if ``timeout`` passed first."""
        return self.client.shutdown(timeout)

    # How. -------------------------------------------------------------------------------

    def _event(
        self,
        user_id: Any,
        event: Any,
        properties: Optional[Message],
        context: Optional[Message],
        timestamp: Optional[datetime],
        anonymous_id: Any,
        integrations: Optional[Message],
        message_id: Optional[str],
    ) -> Result:
        """A track (or a page or screen made one): sent, or ``(True, {})`` when a rule keeps it back."""
        account = as_object("context", context).get("groupId")
        if not self._known(user_id, anonymous_id) or not self._routed(integrations):
            return True, unsent(message_id, timestamp)
        user_id = as_id("user_id", user_id)
        if message_id is not None and message_id.__class__ is not str:
            message_id = as_text(message_id)
        return self._send(
            self._track, "properties", _IN_CONTEXT, user_id, event, properties or None, account_id=account,
            timestamp=moment(timestamp), message_id=message_id,
        )  # fmt: skip

    def _view(
        self,
        kind: str,
        user_id: Any,
        category: Any,
        name: Any,
        properties: Optional[Message],
        context: Optional[Message],
        timestamp: Optional[datetime],
        anonymous_id: Any,
        integrations: Optional[Message],
        message_id: Optional[str],
    ) -> Result:
        for label, value in (("category", category), ("name", name)):
            if value and not isinstance(value, str):
                raise InvalidTypeError(label, f"must be a string, not {type(value).__name__}")
        given = as_object("properties", properties)
        shown = {**({"name": name} if name else {}), **({"category": category} if category else {}), **given}
        title = " ".join(part for part in (category, name) if part)
        event = f"Viewed {title} {kind.title()}" if name else f"Loaded a {kind.title()}"
        queued, message = self._event(user_id, event, shown, context, timestamp, anonymous_id, integrations, message_id)
        return queued, {
            "type": kind,
            "userId": message.get("userId") or shown_id(user_id),
            "anonymousId": shown_id(anonymous_id),
            "category": category,
            "name": name,
            "properties": given,
            "context": context or {},
            "integrations": integrations or {},
            "timestamp": message["timestamp"],
            "messageId": message["messageId"],
        }

    def _send(
        self, send: Callable[..., Result], payload: str, names: Mapping[str, str], *args: Any, **keywords: Any
    ) -> Result:
        """``send(*args, **keywords)``; the payload (``args[-1]``) cleaned as Segment cleans it if its values
        were refused, and errors naming the arguments of the Segment call (``names``: ours to theirs)."""
        try:
            return send(*args, **keywords)
        except InvalidMessageError as error:
            refused = error
        if refused.field.partition("[")[0] == payload and isinstance(args[-1], dict):
            kept = cleaned(args[-1], payload, self._dropped)
            try:
                return send(*args[:-1], kept, **keywords)
            except InvalidMessageError as error:
                refused = error
        head, bracket, rest = refused.field.partition("[")
        raise type(refused)(names.get(head, head) + bracket + rest, refused.problem) from None

    def _hold(self, user_id: str, traits: Message, message_id: Optional[str], timestamp: Any) -> Message:
        """Check the traits of an identify() with no account as they would be sent, and hold them."""
        user = {"type": "user", "userId": user_id, "accountId": "held", "traits": traits}
        try:
            check(user, parameter, stamped=True)
            size = len(encode(user, parameter))
        except InvalidMessageError as error:
            if error.field.partition("[")[0] != "traits":
                raise
            user["traits"] = traits = cleaned(traits, "traits", self._dropped)
            size = len(encode(user, parameter))
        let_go = self._accounts.hold(user_id, traits, size)
        if let_go:
            self._warn_once(
                "let go", f"identify() traits of {let_go} user(s) with no account were let go, the oldest first: "
                f"at most {accounts.MAX_USERS:,} users and {accounts.MAX_HELD_BYTES:,} bytes are held (said once per "
                "client)"
            )  # fmt: skip
        self._warn_once(
            "held", f"identify({user_id!r}) names no account, which Vitally needs for a user: its traits are held "
            "until group() links the user to one (pass context={'groupId': ...} to send at once; said once per client)"
        )  # fmt: skip
        return {"traits": traits, **unsent(message_id, timestamp)}

    def _known(self, user_id: Any, anonymous_id: Any) -> bool:
        """Whether the call names a user Vitally can know: False, with a warning once, for an anonymous one."""
        if someone(user_id, anonymous_id):
            return True
        self._warn_once(
            "anonymous", "a call with only an anonymous_id sends nothing: Vitally has no anonymous users, and knows "
            "a user by the user_id you give (said once per client)"
        )  # fmt: skip
        return False

    def _routed(self, integrations: Optional[Message]) -> bool:
        """Whether Segment's ``integrations`` let this call reach Vitally."""
        if not integrations:
            return True
        if not isinstance(integrations, dict):
            raise InvalidTypeError("integrations", f"must be a dict, not {type(integrations).__name__}")
        chosen = integrations.get("Vitally", integrations.get("All", True))
        if not chosen:
            log.debug("not sent to Vitally, as integrations=%r says", integrations)
        return bool(chosen)

    def _dropped(self, path: str, why: str) -> None:
        log.warning("%s was left out: it %s (Segment's client leaves such values out too)", path, why)

    def _warn_once(self, kind: str, text: str) -> None:
        if kind not in self._told:
            self._told.add(kind)
            log.warning(text)


def unsent(message_id: Any, timestamp: Any) -> Message:
    """The messageId and timestamp of a call nothing was sent for (yet), as Segment would have stamped it."""
    return {
        "timestamp": now_timestamp() if timestamp is None else vitally._timestamp(moment(timestamp)),
        "messageId": vitally._new_message_id() if message_id is None else as_text(message_id),
    }


def stamps(sent: Message, message_id: Any, timestamp: Any) -> Message:
    """The timestamp and messageId of what was sent, or made as ``unsent`` makes them."""
    if "messageId" in sent:
        return {"timestamp": sent["timestamp"], "messageId": sent["messageId"]}
    return unsent(message_id, timestamp)


def shown_id(value: Any) -> Optional[str]:
    """An ID as Segment's returned message shows it: a string, or None."""
    return value if value is None or value.__class__ is str else as_id("id", value)


_IN_CONTEXT = {"account_id": "context['groupId']"}
_AS_GROUP = {"account_id": "group_id"}
"""Our parameter names in errors, as the Segment call names them."""
_SETTINGS = frozenset(SETTING_NAMES)
