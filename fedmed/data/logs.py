"""Capture what pydicom and its decoder plugins say while a file is read, instead of printing it.

pydicom logs through the `pydicom` logger (with a full traceback each time a decoder plugin
fails, whatever the caller catches) and repeats many messages as Python warnings; pylibjpeg,
openjpeg and jpeg_ls log through their own loggers. A hospital's terminal should show one
line per unreadable file, so within `capture_diagnostics()` those records and warnings are
collected: a failed read quotes them in its `DicomReadError`, and all of them are re-logged,
one line each and without tracebacks, at DEBUG on the `fedmed.data.pydicom` logger, which
`fedmed data check --verbose` shows (Python's default configuration never prints DEBUG).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

__all__ = [
    "DIAGNOSTICS_LOGGER",
    "LIBRARY_LOGGERS",
    "Diagnostics",
    "capture_diagnostics",
    "capture_native_stderr",
    "route_diagnostics",
]

DIAGNOSTICS_LOGGER = "fedmed.data.pydicom"
"""Where captured diagnostics are re-logged (DEBUG), prefixed with the file they are about."""

LIBRARY_LOGGERS = ("pydicom", "pylibjpeg", "openjpeg", "jpeg_ls", "rle")
"""Loggers of pydicom and its decoder plugins whose records are captured."""

_MAX_MESSAGE = 300  # characters kept of one message


@dataclass
class Diagnostics:
    """The distinct messages (log records and warnings) emitted during one capture, in order."""

    source: str
    messages: list[str] = field(default_factory=list)
    _warnings: list[warnings.WarningMessage] = field(default_factory=list, repr=False)
    _taken: int = field(default=0, repr=False)

    def add(self, message: str) -> None:
        text = " ".join(message.split())
        if len(text) > _MAX_MESSAGE:
            text = text[: _MAX_MESSAGE - 3] + "..."
        body = text.split(": ", 1)[-1]
        # pydicom both logs and warns many messages: keep the first of the two
        if text and all(m.split(": ", 1)[-1] != body for m in self.messages):
            self.messages.append(text)

    def summary(self, *, limit: int = 3, besides: str = "") -> str | None:
        """The first `limit` messages not already said in `besides`, joined; None when none are left."""
        self._take_warnings()
        left = [m for m in self.messages if m.split(": ", 1)[-1][:80] not in besides]
        if not left:
            return None
        shown = "; ".join(left[:limit])
        more = len(left) - limit
        return shown + (f"; and {more} more" if more > 0 else "")

    def _take_warnings(self) -> None:
        for warning in self._warnings[self._taken :]:
            self.add(f"{warning.category.__name__}: {warning.message}")
        self._taken = len(self._warnings)


class _Router(logging.Handler):
    """Sends each library record to the innermost capture of the thread that logged it.

    A thread with no capture of its own gets the records delivered to the root logger's
    handlers, as if the library loggers still propagated.
    """

    def emit(self, record: logging.LogRecord) -> None:
        stack = _local.__dict__.get("stack")
        if stack:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None and str(record.exc_info[1]) not in text:
                text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            stack[-1].add(f"{record.name}: {text}")
        elif _saved_propagate.get(record.name.split(".")[0], True):
            logging.getLogger().handle(record)


_local = threading.local()
_lock = threading.Lock()
_router = _Router(level=logging.NOTSET)
_users = 0  # captures open in all threads; the router is installed while any is
_saved_propagate: dict[str, bool] = {}


def _install() -> None:
    global _users
    with _lock:
        if _users == 0:
            for name in LIBRARY_LOGGERS:
                logger = logging.getLogger(name)
                _saved_propagate[name] = logger.propagate
                logger.addHandler(_router)
                logger.propagate = False
        _users += 1


def _uninstall() -> None:
    global _users
    with _lock:
        _users -= 1
        if _users == 0:
            for name in LIBRARY_LOGGERS:
                logger = logging.getLogger(name)
                logger.removeHandler(_router)
                logger.propagate = _saved_propagate.pop(name, True)


@contextmanager
def capture_diagnostics(source: object) -> Iterator[Diagnostics]:
    """Collect pydicom's (and its plugins') log records and all warnings raised within.

    `source` (a file path) names what the messages are about when they are re-logged. Nested
    captures hand their messages to the enclosing one, which alone re-logs them. Other
    loggers are untouched; the library loggers get their handlers and propagation back when
    the last capture in the process ends. Warnings are caught with `warnings.catch_warnings`,
    which Python documents as not thread-safe.
    """
    diagnostics = Diagnostics(str(source))
    stack: list[Diagnostics] = _local.__dict__.setdefault("stack", [])
    _install()
    stack.append(diagnostics)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            diagnostics._warnings = caught
            try:
                yield diagnostics
            finally:
                diagnostics._take_warnings()
    finally:
        stack.pop()
        _uninstall()
        if stack:
            for message in diagnostics.messages:
                stack[-1].add(message)
        else:
            log = logging.getLogger(DIAGNOSTICS_LOGGER)
            for message in diagnostics.messages:
                log.debug("%s: %s", diagnostics.source, message)


@contextmanager
def capture_native_stderr(diagnostics: Diagnostics) -> Iterator[None]:
    """Collect what native code writes to file descriptor 2 within, as `diagnostics` messages.

    For C and C++ libraries that print instead of logging (GDCM's bundled OpenJPEG prints
    "Invalid number of tiles ..." itself). The descriptor is process-wide: keep the block
    to one decoder call; another thread's stderr output meanwhile is collected too.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                for line in sink.read(64 * 1024).decode("utf-8", "replace").splitlines():
                    diagnostics.add(f"native: {line}")
    finally:
        os.close(saved)


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


@contextmanager
def route_diagnostics(*, stream: TextIO | None = None, path: Path | None = None) -> Iterator[_Counter]:
    """While open, write re-logged diagnostics to `stream` and/or append them to `path`.

    Yields a handler whose `count` says how many there were, so a command can say that it
    kept some quiet. The `fedmed.data.pydicom` logger gets its level, handlers and
    propagation back on exit.
    """
    logger = logging.getLogger(DIAGNOSTICS_LOGGER)
    counter = _Counter()
    handlers: list[logging.Handler] = [counter]
    if stream is not None:
        handlers.append(logging.StreamHandler(stream))
    if path is not None:
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
    formatter = logging.Formatter("%(asctime)s pydicom %(message)s")
    saved = logger.level, logger.propagate
    for handler in handlers:
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # shown here; not a second time by whatever the root logger has
    try:
        yield counter
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
