"""What ``doctor`` found: ``Finding``s, gathered by ``Findings`` (which keeps the write key out of them),
and the ``Report`` that says whether a message would be delivered and prints as plain text."""

from __future__ import annotations

import platform
import textwrap
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ..delivery import Stats
from ..transport.redact import Redactor
from ..version import VERSION

OK = "ok"
NOTE = "note"
WARNING = "warning"
PROBLEM = "problem"
LEVELS = (OK, NOTE, WARNING, PROBLEM)
"""A finding's level: ``problem`` means a message would not be delivered (the exit code is 1); a
``warning`` needs doing but does not stop delivery; ``note`` and ``ok`` need nothing."""

_SHOWN = {OK: "ok", NOTE: "note", WARNING: "WARNING", PROBLEM: "PROBLEM"}
_WIDTH = 100


@dataclass(frozen=True)
class Finding:
    """One thing ``doctor`` found, and what to do about it."""

    topic: str
    """What was looked at: ``settings``, ``endpoint``, ``proxy``, ``dns``, ``tcp``, ``tls``, ``write key``,
    ``test event``, ``process``, ``spool``, ``stats``."""
    level: str
    """One of ``LEVELS``."""
    text: str
    """What was found."""
    action: str = ""
    """What to do about it (empty when nothing needs doing)."""

    def lines(self) -> List[str]:
        """The finding as the report prints it: its level, its text, then what to do, wrapped."""
        label = f"  {_SHOWN[self.level]:<8} "
        lines = _wrapped(self.text, label, " " * len(label))
        if self.action:
            lines += _wrapped(f"what to do: {self.action}", " " * len(label), " " * (len(label) + 4))
        return lines


def _wrapped(text: str, first: str, rest: str) -> List[str]:
    """``text`` in lines of at most ``_WIDTH`` characters, broken at spaces only (never inside a path,
    a URL or a host name, which may hold hyphens)."""
    return textwrap.wrap(
        text, _WIDTH, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False, break_long_words=False
    )


@dataclass(frozen=True)
class Report:
    """What ``analytics_vitally.doctor()`` (and ``analytics-vitally doctor``) found.

        report = analytics_vitally.doctor()
        print(report)            # plain text, for a support ticket; never shows the write key
        if not report.ok: ...    # a message would not be delivered: report.problems say why
    """

    findings: Tuple[Finding, ...]
    """Everything found, in the order checked (settings, endpoint, network, write key, process, spool, stats)."""
    delivers: bool
    """Vitally accepted the write key (the empty batch, or the test event)."""
    stats: Optional[Stats] = None
    """The checked client's ``stats()``, when ``doctor()`` was given a client or the default client exists."""

    @property
    def problems(self) -> List[Finding]:
        """The findings that stop delivery."""
        return [finding for finding in self.findings if finding.level == PROBLEM]

    @property
    def warnings(self) -> List[Finding]:
        """The findings that do not stop delivery but deserve a look (a local endpoint, a proxy that reads the key)."""
        return [finding for finding in self.findings if finding.level == WARNING]

    @property
    def ok(self) -> bool:
        """True only when a message would be delivered: the key was accepted and nothing stops delivery."""
        return self.delivers and not self.problems

    @property
    def exit_code(self) -> int:
        """``analytics-vitally doctor``'s exit code: 0 when ``ok``, else 1."""
        return 0 if self.ok else 1

    def text(self) -> str:
        """The report as plain text (no colours), to read or paste into a support ticket."""
        if self.ok:
            verdict = "a message would be delivered"
        else:
            verdict = f"a message would NOT be delivered ({len(self.problems)} problem(s))"
        if self.warnings:
            verdict += f"; {len(self.warnings)} warning(s)"
        lines = [
            f"analytics-vitally doctor: analytics-vitally {VERSION}, Python {platform.python_version()}, "
            f"{platform.system() or 'unknown system'}",
            f"result: {verdict}",
        ]
        topic = None
        for finding in self.findings:
            if finding.topic != topic:
                topic = finding.topic
                lines += ["", topic]
            lines += finding.lines()
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.text()


@dataclass
class Findings:
    """Findings as they are made, each with the write key taken out of its text (a server or an
    exception may echo it), so neither a ``Report`` nor its text ever holds the key."""

    write_key: str = field(default="", repr=False)
    found: List[Finding] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._redact = Redactor(self.write_key)
        self.write_key = ""  # the redactor has it; nothing else keeps it

    def add(self, topic: str, level: str, text: str, action: str = "") -> Finding:
        finding = Finding(topic, level, self._redact.text(text), self._redact.text(action))
        self.found.append(finding)
        return finding

    def report(self, delivers: bool, stats: Optional[Stats] = None) -> Report:
        return Report(tuple(self.found), delivers, stats)


__all__ = ["LEVELS", "NOTE", "OK", "PROBLEM", "WARNING", "Finding", "Findings", "Report"]
