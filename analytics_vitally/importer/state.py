"""The importer's resume state: how far earlier runs got in each file, and where they sent it."""

from __future__ import annotations

import json
import re
from typing import Any, Dict, Optional

from ..settings import Settings
from .common import ImportFilesError, log, one_line, write_atomically
from .sources import Source, count_lines, digest_of, open_input


class ResumeState:
    """How far earlier runs got in each file, kept in the state file by real path.

    With no ``path`` (a dry run, or ``state=None``) nothing is read or saved.
    """

    def __init__(self, path: Optional[str], restart: bool, destination: Dict[str, str]) -> None:
        self._path = path
        self._restart = restart
        self._destination = destination
        self._files: Dict[str, Any] = {} if path is None else _load_state(path)

    def prepare(self, source: Source) -> None:
        """Count the file's lines and skip what an earlier run did, if the file still starts the same."""
        if source.path is None:
            return
        saved = None if self._path is None or self._restart else self._files.get(source.path)
        elsewhere = saved.get("destination") if isinstance(saved, dict) else None
        if elsewhere is not None and elsewhere != self._destination:
            # Skipping what went to another Vitally account (or host) would leave it out of this one.
            raise ImportFilesError(
                f"the progress of {source.name} saved in {self._path} is for another destination "
                f"({_shown(elsewhere)}), not {_shown(self._destination)}: give another --state file, "
                "or --restart to send the whole file here",
                "state",
            )
        problem = None if saved is None else _state_problem(saved)
        if problem is not None:
            log.warning(
                "ignoring the saved progress of %s in %s (%s): sending it from the start",
                source.name,
                self._path,
                problem,
            )
            saved = None
        with open_input(source.path) as stream:
            if saved is not None and saved["offset"] > 0:
                offset: int = saved["offset"]
                digest = digest_of(stream, offset)
                if digest is not None and digest.hexdigest() == saved["sha256"]:
                    source.offset, source.digest = offset, digest
                    source.line = source.checkpoint_line = saved["line"]
                    source.skipped = saved["read"]
                    source.rejected = source.earlier_rejected = saved["rejected"]
                else:
                    log.warning("%s changed since the saved progress: sending it from the start", source.name)
                stream.seek(0)
            source.total_lines = count_lines(stream)

    def record(self, source: Source, done: bool) -> None:
        """Save that every line of ``source`` up to where it is now was delivered or rejected."""
        if self._path is not None and source.path is not None:
            self._files[source.path] = {**source.state(done), "destination": self._destination}
            self.save()

    def save(self) -> None:
        if self._path is None:
            return
        try:
            write_atomically(self._path, json.dumps({"version": 1, "files": self._files}, indent=1) + "\n")
        except OSError as error:
            raise ImportFilesError(
                f"cannot save progress to {self._path} ({error}); choose another place for it", "state"
            ) from None


def destination_of(settings: Settings) -> Dict[str, str]:
    """Where an import sends: the endpoint, and a fingerprint of the write key (never the key)."""
    return {"url": settings.url, "key": settings.fingerprint}


def _shown(destination: Any) -> str:
    if not isinstance(destination, dict):
        return one_line(repr(destination), 80)
    url, key = one_line(str(destination.get("url")), 120), one_line(str(destination.get("key")), 20)
    return f"{url}, write key fingerprint {key}"


def _load_state(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            files = json.load(stream).get("files")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError, RecursionError) as error:
        # A half-written state (power loss) only costs resending: message IDs make that safe.
        log.warning("ignoring the unreadable progress file %s: %s", path, one_line(str(error)))
        return {}
    return files if isinstance(files, dict) else {}


_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def _state_problem(entry: Any) -> Optional[str]:
    """What is wrong with one file's saved progress (``Source.state``), or None if it can be used."""
    if not isinstance(entry, dict):
        return f"an entry must be an object, not {type(entry).__name__}"
    for name in ("line", "offset", "read", "rejected"):
        value = entry.get(name)
        if type(value) is not int or value < 0:  # bool is an int, but not a count
            return f"{name} must be a whole number of at least 0, not {one_line(repr(value), 40)}"
    sha256 = entry.get("sha256")
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        return f"sha256 must be 64 hex digits, not {one_line(repr(sha256), 40)}"
    if "done" in entry and not isinstance(entry["done"], bool):
        return f"done must be true or false, not {one_line(repr(entry['done']), 40)}"
    if not entry["rejected"] <= entry["read"] <= entry["line"] <= entry["offset"]:
        return "its counts do not fit together (rejected <= read <= line <= offset)"
    return None
