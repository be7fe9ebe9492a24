"""Forward the audit log to an audit record repository: RFC 5424 syslog over TLS (RFC 5425 framing).

The local log is the spool. The forwarder (one thread in the server's background
process) reads the log files in order from a cursor kept beside them, sends each
record as the DICOM audit message XML, and moves the cursor only after the
connection has stayed up for a moment after the send (RFC 5425 has no
acknowledgement: a connection found broken means the records since the last
committed position are sent again). So an outage of the repository delays
records, never loses them or blocks a request; after a broken connection the
repository may see a record twice (the structured data carries its log position
as a stable id to drop duplicates by).
"""
from __future__ import annotations

import json
import logging
import os
import select
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Iterator

from archive.audit.log import log_files
from archive.audit.messages import to_xml
from archive.config import AuditSettings, SyslogSettings

log = logging.getLogger(__name__)
#: facility 10 (security/authorization), as IHE ATNA asks; severity notice, warning for failures.
FACILITY = 10
MSGID = "IHE+RFC-3881"
#: Example enterprise number (RFC 5612) for the SD-ID carrying the record's log position.
SD_ID = "slidearchive@32473"
BATCH = 1000
SETTLE_SECONDS = 0.5


class Cursor:
    """The position (file name, byte offset) up to which records are delivered; saved atomically."""

    def __init__(self, path: Path):
        self.path = path
        try:
            state = json.loads(path.read_text())
            self.file, self.offset = str(state["file"]), int(state["offset"])
        except (OSError, ValueError, KeyError):
            self.file, self.offset = "", 0

    def save(self, file: str, offset: int) -> None:
        self.file, self.offset = file, offset
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"file": file, "offset": offset}))
        os.replace(tmp, self.path)


def pending(directory: Path, file: str, offset: int) -> Iterator[tuple[str, int, bytes]]:
    """(file, end offset, line) of every complete record after the position, in order."""
    for path in log_files(directory):
        if path.name < file:
            continue
        start = offset if path.name == file else 0
        with open(path, "rb") as f:
            f.seek(start)
            position = start
            for line in f:
                if not line.endswith(b"\n"):
                    break  # still being written
                position += len(line)
                yield path.name, position, line


def frame(line: bytes, file: str, end: int, hostname: str) -> bytes:
    """One octet-counted RFC 5425 frame holding an RFC 5424 message with the XML audit message."""
    record = json.loads(line)
    severity = 4 if record.get("outcome") else 5
    header = (f"<{FACILITY * 8 + severity}>1 {record['time']} {hostname[:255] or '-'} slidearchive - {MSGID} "
              f'[{SD_ID} position="{file}:{end}"] ')
    message = header.encode("ascii", "replace") + b"\xef\xbb\xbf" + to_xml(record["AuditMessage"]).encode("utf-8")
    return str(len(message)).encode() + b" " + message


class SyslogForwarder:
    def __init__(self, audit: AuditSettings, data_dir: Path):
        assert audit.syslog is not None
        self.target: SyslogSettings = audit.syslog
        self.directory = audit.directory_in(data_dir)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cursor = Cursor(self.directory / f"forward-{self.target.host}-{self.target.port}.json")
        self.hostname = socket.gethostname()
        self.context = self._context()
        self.sock: ssl.SSLSocket | None = None
        self.sent = 0

    def _context(self) -> ssl.SSLContext:
        t = self.target
        context = ssl.create_default_context(cafile=str(Path(t.ca_file).expanduser()) if t.ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if t.cert_file:
            context.load_cert_chain(Path(t.cert_file).expanduser(), Path(t.key_file).expanduser())
        return context

    def run(self, stop: threading.Event) -> None:
        """Forward until ``stop`` is set; an unreachable repository is retried every ``retry_seconds``."""
        while not stop.is_set():
            try:
                if not self.step():
                    stop.wait(SETTLE_SECONDS)
            except (OSError, ssl.SSLError) as e:
                log.warning("audit repository %s:%d unreachable (%s); records stay spooled in the audit log",
                            self.target.host, self.target.port, e)
                self._disconnect()
                stop.wait(self.target.retry_seconds)

    def step(self) -> bool:
        """Send one batch after the cursor; True when there was something to send."""
        batch = []
        for item in pending(self.directory, self.cursor.file, self.cursor.offset):
            batch.append(item)
            if len(batch) >= BATCH:
                break
        if not batch:
            return False
        sock = self._connection()
        sock.sendall(b"".join(frame(line, file, end, self.hostname) for file, end, line in batch))
        time.sleep(SETTLE_SECONDS)
        if not self._alive():
            raise ConnectionError("the repository closed the connection; resending from the last committed record")
        file, end, _ = batch[-1]
        self.cursor.save(file, end)
        self.sent += len(batch)
        return True

    def drain(self, timeout: float) -> None:
        """Send what is pending, giving up after ``timeout`` seconds (at ``serve`` shutdown)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and self.step():
                pass
        except (OSError, ssl.SSLError):
            pass
        self._disconnect()

    def _connection(self) -> ssl.SSLSocket:
        if self.sock is None:
            t = self.target
            raw = socket.create_connection((t.host, t.port), timeout=10)
            try:
                self.sock = self.context.wrap_socket(raw, server_hostname=t.server_name or t.host)
            except BaseException:
                raw.close()
                raise
        return self.sock

    def _alive(self) -> bool:
        """A syslog receiver never writes: readable means closed (or an alert)."""
        assert self.sock is not None
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return True
        try:
            return bool(self.sock.recv(1))
        except (OSError, ssl.SSLError):
            return False

    def _disconnect(self) -> None:
        if self.sock is not None:
            try:
                self.sock.settimeout(2)
                self.sock.unwrap()  # close_notify, so the repository sees a clean end
            except (OSError, ValueError):
                pass
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def start(audit: AuditSettings, data_dir: Path) -> threading.Event | None:
    """The forwarder thread, when ``[audit.syslog]`` is configured; set the returned event to stop it."""
    if audit.syslog is None or not audit.enabled:
        return None
    stop = threading.Event()
    threading.Thread(target=SyslogForwarder(audit, data_dir).run, args=(stop,), name="audit-syslog",
                     daemon=True).start()
    return stop
