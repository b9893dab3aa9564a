"""The spool: can it be written, how much room is left, and what it holds, by destination and key
(``spool.inspect`` and ``SpoolReport.left``, as ``analytics-vitally spool`` reports them)."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Optional

from ..errors import ConfigurationError
from ..settings import Settings
from ..spool import DEAD_LETTER, inspect
from ..spool.format import OTHER_KEY
from ..spool.report import LEFT_ORDER, left_text
from .report import NOTE, OK, PROBLEM, WARNING, Findings

TOPIC = "spool"


def check(directory: Optional[str], settings: Optional[Settings], found: Findings) -> None:
    """What ``directory`` (the spool setting) is like for a client with ``settings`` (None: unusable)."""
    if not directory:
        found.add(
            TOPIC,
            NOTE,
            "none: queued messages live in memory only, and a crash, kill or deploy that ends the process early "
            "loses them",
            "set spool to a local directory (or VITALLY_SPOOL) if losing the last seconds of messages matters",
        )
        return
    path = os.path.abspath(directory)
    if not _writable(path, found):
        return
    _room(path, settings, found)
    if os.path.isdir(path):
        _contents(path, settings, found)


def _writable(path: str, found: Findings) -> bool:
    """Whether a client could make ``path`` and write files in it, found by doing so (then undone)."""
    action = (
        "give the app's user a local directory it can write (not NFS), and set spool (or VITALLY_SPOOL) to it; "
        "as it is, Client() raises ConfigurationError"
    )
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        found.add(TOPIC, PROBLEM, f"{path} cannot be made: {existing} is a file, not a directory", action)
        return False
    try:
        if existing == path:
            handle, probe = tempfile.mkstemp(prefix=".doctor-", dir=path)
            try:
                os.write(handle, b"analytics-vitally doctor")
            finally:
                os.close(handle)
                os.unlink(probe)
        else:
            shutil.rmtree(tempfile.mkdtemp(prefix=".doctor-", dir=existing))
    except OSError as error:
        where = path if existing == path else f"{existing} (where {path} would be made)"
        found.add(TOPIC, PROBLEM, f"{where} cannot be written: {error.strerror or error}", action)
        return False
    made = "" if existing == path else f" (it does not exist yet: the client makes it in {existing})"
    found.add(TOPIC, OK, f"{path} can be written{made}")
    return True


def _room(path: str, settings: Optional[Settings], found: Findings) -> None:
    existing = path
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    limit = settings.max_spool_bytes if settings is not None else None
    if limit is not None and free < limit:
        found.add(
            TOPIC,
            WARNING,
            f"{_size(free)} free on its file system, less than max_spool_bytes ({_size(limit)}): a long outage "
            "can fill the disk, and calls are then refused (stats().dropped)",
            "free some space, or lower max_spool_bytes",
        )
    else:
        bound = f" (max_spool_bytes {_size(limit)})" if limit is not None else ""
        found.add(TOPIC, OK, f"{_size(free)} free on its file system{bound}")


def _contents(path: str, settings: Optional[Settings], found: Findings) -> None:
    try:
        report = inspect(path)
    except (OSError, ConfigurationError) as error:
        found.add(TOPIC, WARNING, f"its contents cannot be read: {error}", "check the directory's permissions")
        return
    found.add(
        TOPIC,
        NOTE,
        f"holds {report.pending} pending message(s) in {len(report.files)} file(s), "
        f"{report.dead_letters} dead letter(s); oldest pending: {report.oldest or 'none with a timestamp'}",
    )
    if settings is None or not settings.write_key:
        if report.pending:
            found.add(TOPIC, NOTE, "whose they are is not shown: the settings are unusable")
        return
    left = report.left(settings.fingerprint, settings.url)
    others = sum(reason.messages for why, reason in left.items() if why != "dead letters")
    mine = report.pending - others
    if mine:
        found.add(
            TOPIC,
            NOTE,
            f"{mine} message(s) for this write key and endpoint, left by processes that ended: the next client "
            "started with this spool sends them",
            f"or send them now: analytics-vitally spool --send {path}",
        )
    for why in sorted(left, key=LEFT_ORDER.index):
        text = left_text(path, why, left[why], settings.fingerprint)
        if why == "running":
            found.add(TOPIC, OK, text)
        elif why == "dead letters":
            dead = os.path.join(path, DEAD_LETTER)
            found.add(TOPIC, WARNING, text, f"each line of {dead} is a message Vitally refused, and why")
        elif why == OTHER_KEY:
            found.add(
                TOPIC,
                WARNING,
                text,
                f"after a key rotation, send them with this key: analytics-vitally spool --send --rekey {path}",
            )
        elif why == "damaged":
            found.add(TOPIC, WARNING, text, f"keep the files for support: analytics-vitally spool {path} lists them")
        else:
            found.add(
                TOPIC,
                WARNING,
                text,
                f"send them with the key and host they were written for: analytics-vitally spool --send {path} "
                "--write-key ... --host ...",
            )


def _size(count: int) -> str:
    """``count`` bytes in kB, MB or GB (powers of 1000, as ``df -H`` shows them)."""
    for power, unit in ((3, "GB"), (2, "MB"), (1, "kB")):
        if count >= 1000**power:
            return f"{count / 1000**power:,.1f} {unit}"
    return f"{count} bytes"


__all__ = ["check"]
