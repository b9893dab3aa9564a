"""What ``analytics-vitally import`` shows on standard error while it runs: rejected lines, the
importer's log, and progress. The importer itself prints nothing; the CLI plugs this in."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from typing import Any

from .importer import ImportProgress, Rejection

PROGRESS_INTERVAL = 5.0
"""Seconds between two progress lines when standard error is not a terminal."""


class ConsoleOutput(logging.Handler):
    """An import's output on standard error, as ``analytics-vitally import`` shows it: rejected lines,
    the importer's log, and progress (a tqdm bar on a terminal, else a line every PROGRESS_INTERVAL
    seconds). Pass ``output.progress`` and ``output.reject`` as the options' callbacks and add it to
    the ``analytics_vitally.importer`` logger. Written from the client's threads too.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self._writing = threading.Lock()
        self._bar: Any = None
        self._begun = False
        self._started = self._shown = time.monotonic()

    def write(self, text: str) -> None:
        with self._writing:
            if self._bar is not None:
                self._bar.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr, flush=True)

    def emit(self, record: logging.LogRecord) -> None:
        self.write(record.getMessage())

    def reject(self, rejection: Rejection) -> None:
        self.write(str(rejection))  # FILE:LINE: reason

    def progress(self, progress: ImportProgress) -> None:
        if not self._begun:
            self._begun = True
            self._started = self._shown = time.monotonic()
            self._bar = _progress_bar(progress)
        if self._bar is not None:
            self._bar.update(progress.lines - self._bar.n)
        elif time.monotonic() - self._shown >= PROGRESS_INTERVAL:
            self.write(self._line(progress))

    def _line(self, progress: ImportProgress) -> str:
        self._shown = now = time.monotonic()
        done, total = progress.lines, progress.total
        rate = (done - progress.started_at) / max(now - self._started, 1e-9)
        line = f"{done} of {total} lines ({100 * done // total}%)" if total else f"{done} lines"
        line += f", {progress.sent} sent, {rate:.0f} lines/s"
        if total and rate > 0:
            line += f", {(total - done) / rate:.0f}s left"
        return line

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        super().close()


def _progress_bar(progress: ImportProgress) -> Any:
    """A tqdm bar (count, rate, time left) when standard error is a terminal and tqdm is installed; else None."""
    try:
        if not sys.stderr.isatty() or os.get_terminal_size(sys.stderr.fileno()).columns <= 0:
            return None
        tqdm = importlib.import_module("tqdm").tqdm
    except (OSError, ValueError):  # no terminal after all
        return None
    except ImportError:
        print("(pip install 'analytics-vitally[cli]' for a progress bar)", file=sys.stderr)
        return None
    total, initial = progress.total, progress.lines
    return tqdm(total=total, initial=initial, unit=" lines", file=sys.stderr, dynamic_ncols=True, smoothing=0.05)


__all__ = ["PROGRESS_INTERVAL", "ConsoleOutput"]
