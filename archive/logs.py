"""The server's logging: level, destination and format from ``[logging]``, and the HTTP access log.

Every process of ``serve`` (supervisor, HTTP workers, the DIMSE / index process) calls
``configure``; with a file, each appends whole lines to it (O_APPEND), so they interleave
by line. The access log records what was asked and answered, never what was sent: query
parameter *names* only, because their values are matching keys (PatientName=...).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable

from archive import metrics
from archive.config import LoggingSettings

ACCESS_LOGGER = "slidearchive.access"
#: Where the route template of a request is kept (set by the HTTP app and the frame fast path).
ROUTE_ENVIRON = "slidearchive.route"
#: The route label of a request no route matched (an unknown URL).
UNMATCHED = "unmatched"
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Where a library's message quotes a received value ("Invalid 'Affected SOP Instance UID' value '...'",
#: "Invalid value for VR UI: '...'"): from the quote on, the rest of the message is cut.
_QUOTED_VALUE = re.compile(r"(value\b[^'\n]{0,40})'.*", re.S)


class _LibraryRecords(logging.Filter):
    """pynetdicom and pydicom quote received values in their warnings and errors (a malformed UID
    of a peer's command, the text of an exception with its traceback), and so may Python warnings:
    values that may be a patient's identifiers. Their records are written with the value cut and,
    instead of the traceback, the exception's type and where it was raised (``failure_site``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(("pynetdicom", "pydicom", "py.warnings")):
            return True
        if isinstance(record.msg, BaseException):  # LOGGER.exception(exc): the message is the exception's text
            message = f"unexpected {type(record.msg).__name__}"
        else:
            message = _QUOTED_VALUE.sub(r"\1(not logged)", record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            message += f" at {failure_site(record.exc_info[1])}"
        record.msg, record.args, record.exc_info, record.exc_text = message, (), None, None
        return True


def _thread_failed(failure: threading.ExceptHookArgs) -> None:
    """A thread ended by an exception is logged by type and place, not printed with its text."""
    if failure.exc_type is SystemExit:
        return
    name = failure.thread.name if failure.thread is not None else "a thread"
    logging.getLogger(__name__).error("%s ended on an unexpected %s at %s", name, failure.exc_type.__name__,
                                      failure_site(failure.exc_value) if failure.exc_value else "unknown")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        return json.dumps(entry, separators=(",", ":"))


def configure(settings: LoggingSettings, data_dir: Path, access: bool = False) -> None:
    """Point the root logger (and Python warnings) at the configured destination, replacing earlier setup.

    ``access``: this process answers HTTP and writes the access log (the HTTP workers only).
    """
    path = settings.path(data_dir)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if settings.format == "json" else logging.Formatter(_TEXT))
    handler.addFilter(_LibraryRecords())
    threading.excepthook = _thread_failed
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    logging.captureWarnings(True)  # library warnings land in the same place, formatted alike
    global _access
    if _access is not None:
        _access.close()
    _access = AccessSink(path, settings.format) if access and settings.access_log else None


class AccessSink:
    """Access-log lines, kept in memory and written (whole lines, one ``write``) twice a second.

    Not through ``logging``: a handler that flushes every record cost the frame path more than
    the frame itself. Whole lines per write keep the processes sharing a file from splitting
    each other's lines (O_APPEND). A worker that is killed loses at most its last half second.
    """

    FLUSH_SECONDS = 0.5
    MAX_PENDING = 2000

    def __init__(self, path: Path | None, fmt: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640) if path is not None else None
        self.json = fmt == "json"
        self.pending: list[str] = []
        self.lock = threading.Lock()
        self._stamps: dict[int, str] = {}
        self.stopped = threading.Event()
        threading.Thread(target=self._flusher, name="access-log", daemon=True).start()
        atexit.register(self.close)

    def write(self, fields: dict) -> None:
        stamp = self._stamp()
        if self.json:
            line = json.dumps({"time": stamp, "logger": ACCESS_LOGGER, **fields}, separators=(",", ":"))
        else:
            line = (f'{stamp} INFO {ACCESS_LOGGER}: {fields["remote"]} "{fields["method"]} {fields["path"]}" '
                    f'{fields["status"]} {fields["bytes"]} {fields["ms"]:.2f}ms')
        with self.lock:
            self.pending.append(line + "\n")
            full = len(self.pending) >= self.MAX_PENDING
        if full:
            self.flush()

    def _stamp(self) -> str:
        """The local time to the second, formatted once a second (localtime + strftime per line
        were about half of writing the line)."""
        second = int(time.time())
        stamp = self._stamps.get(second)
        if stamp is None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._stamps = {second: stamp}  # replaced whole: a thread reading the old one is not disturbed
        return stamp

    def _flusher(self) -> None:
        while not self.stopped.wait(self.FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        with self.lock:
            lines, self.pending = self.pending, []
        if not lines:
            return
        data = "".join(lines).encode("utf-8", "replace")
        try:
            os.write(self.fd if self.fd is not None else sys.stderr.fileno(), data)
        except OSError:
            pass  # a full disk must not take requests down; the lines are lost

    def close(self) -> None:
        self.stopped.set()
        self.flush()


_access: AccessSink | None = None


class AccessLog:
    """WSGI middleware: one access-log line and the request metrics (archive.metrics) per request,
    when its body is done."""

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        status = ["-"]

        def recording_start_response(code: str, headers, exc_info=None):
            status[0] = code.split(" ", 1)[0]
            return start_response(code, headers, exc_info) if exc_info else start_response(code, headers)

        body = self.app(environ, recording_start_response)
        if isinstance(body, list):  # the frame fast path: already complete, pass it on untouched
            self._record(environ, status[0], sum(map(len, body)), started)
            return body
        return _Counted(body, lambda n: self._record(environ, status[0], n, started))

    @staticmethod
    def _record(environ: dict, status: str, size: int, started: float) -> None:
        seconds = time.perf_counter() - started
        metrics.http_request(environ.get(ROUTE_ENVIRON) or UNMATCHED, environ.get("REQUEST_METHOD", "-"), status,
                             seconds)
        sink = _access
        if sink is None:
            return
        query = query_keys(environ.get("QUERY_STRING", ""))
        sink.write({"remote": environ.get("REMOTE_ADDR", "-"), "method": environ.get("REQUEST_METHOD", "-"),
                    "path": environ.get("PATH_INFO", "") + (f"?{query}" if query else ""), "status": status,
                    "bytes": size, "ms": round(seconds * 1000, 2)})


def query_keys(query: str) -> str:
    """``a=1&b=x`` -> ``a=&b=``: which parameters were given, not their values (they may be names)."""
    if not query:  # every frame request: 1 us of splitting and joining nothing
        return ""
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


def quiet_libraries() -> None:
    """pydicom logs invalid values verbatim and pynetdicom logs data sets at debug: both could carry PHI."""
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def failure_site(e: BaseException, depth: int = 3) -> str:
    """Where an unexpected exception was raised, innermost first ("frames.py:144 index_frames <
    ingest.py:269 _commit"): file names, lines and functions only, so an operator can find the
    fault without the exception's text, which may quote data-set values."""
    frames = traceback.extract_tb(e.__traceback__)[-depth:]
    return " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames)) or "unknown"
