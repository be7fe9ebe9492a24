"""The server's logging: level, destination and format from ``[logging]``, and the HTTP access log.

Every process of ``serve`` (supervisor, HTTP workers, the DIMSE / index process) calls
``configure``; with a file, each appends whole lines to it (O_APPEND), so they interleave
by line. The access log records what was asked and answered, never what was sent: query
parameter *names* only, because their values are matching keys (PatientName=...).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from .config import LoggingSettings

ACCESS_LOGGER = "slidearchive.access"
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, separators=(",", ":"))


def configure(settings: LoggingSettings, data_dir: Path) -> None:
    """Point the root logger (and Python warnings) at the configured destination, replacing earlier setup."""
    path = settings.path(data_dir)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if settings.format == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    logging.captureWarnings(True)  # library warnings land in the same place, formatted alike
    access = logging.getLogger(ACCESS_LOGGER)
    access.setLevel(logging.INFO if settings.access_log else logging.CRITICAL + 1)
    access.propagate = False
    for old in list(access.handlers):
        access.removeHandler(old)
    access.addHandler(handler)


class AccessLog:
    """WSGI middleware: one INFO line on ``slidearchive.access`` per request, when the body is done."""

    def __init__(self, app: Callable):
        self.app = app
        self.log = logging.getLogger(ACCESS_LOGGER)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if not self.log.isEnabledFor(logging.INFO):
            return self.app(environ, start_response)
        started = time.perf_counter()
        status = ["-"]

        def recording_start_response(code: str, headers, exc_info=None):
            status[0] = code.split(" ", 1)[0]
            return start_response(code, headers, exc_info) if exc_info else start_response(code, headers)

        body = self.app(environ, recording_start_response)
        if isinstance(body, list):  # the frame fast path: already complete, pass it on untouched
            self._record(environ, status[0], sum(len(chunk) for chunk in body), started)
            return body
        return _Counted(body, lambda n: self._record(environ, status[0], n, started))

    def _record(self, environ: dict, status: str, size: int, started: float) -> None:
        ms = (time.perf_counter() - started) * 1000
        query = query_keys(environ.get("QUERY_STRING", ""))
        path = environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
        fields = {"remote": environ.get("REMOTE_ADDR", "-"), "method": environ.get("REQUEST_METHOD", "-"),
                  "path": path, "status": status, "bytes": size, "ms": round(ms, 2)}
        self.log.info('%s "%s %s" %s %d %.2fms', fields["remote"], fields["method"], path, status, size, ms,
                      extra={"fields": fields})


def query_keys(query: str) -> str:
    """``a=1&b=x`` -> ``a=&b=``: which parameters were given, not their values (they may be names)."""
    keys = [part.split("=", 1)[0] for part in query.split("&") if part]
    return "&".join(f"{k[:64]}=" for k in keys[:50])


class _Counted:
    """The response iterable, counting bytes; ``done`` runs once when the server closes it."""

    def __init__(self, body: Iterable[bytes], done: Callable[[int], None]):
        self.body = body
        self.done = done
        self.size = 0

    def __iter__(self):
        for chunk in self.body:
            self.size += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.done(self.size)
