"""Keeping the write key out of what a server sent back: answers and error texts are redacted
before they are passed on (``on_error``, ``DeliveryError``) or logged."""

from __future__ import annotations

import json

REDACTED = "[redacted write_key]"


class Redactor:
    """Removes the write key from what a server sent back (it may echo the request's headers)."""

    def __init__(self, secret: str) -> None:
        texts = {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1]}
        raw = {secret.encode(), json.dumps(secret).encode()[1:-1]}  # settings allow printable ASCII keys only
        texts.update(repr(form)[2:-1] for form in list(raw))  # as shown inside a bytes repr
        self._texts = sorted((form for form in texts if form), key=len, reverse=True)
        self._raw = sorted((form for form in raw if form), key=len, reverse=True)

    def text(self, value: object) -> str:
        text = str(value)
        for form in self._texts:
            text = text.replace(form, REDACTED)
        return text

    def answer(self, data: bytes, cut: bool) -> str:
        """An answer's body as text; ``cut``: it went on, so a key may begin at its very end."""
        for form in self._raw:
            data = data.replace(form, REDACTED.encode())
            if cut:
                for length in range(min(len(form), len(data)) - 1, 0, -1):
                    if data.endswith(form[:length]):
                        data = data[:-length] + REDACTED.encode()
                        break
        return self.text(data.decode("utf-8", errors="replace"))


__all__ = ["REDACTED", "Redactor"]
