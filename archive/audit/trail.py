"""The audit trail: who did what to which study, as DICOM audit messages (PS3.15 A.5).

Every door calls ``archive.audit.record(event, principal=..., ...)``; single-frame
traffic calls ``archive.audit.frame(...)``, which is summarised (a Begin
Transferring on the first frame of a series, then one DICOM Instances Transferred
per principal and series per ``frame_interval`` with the counts). Neither ever
raises nor blocks: records go into a bounded in-memory queue drained by one
writer thread per process, which appends them to the local log (``audit_log``).
Group commit: a batch that follows the previous write by less than ``_GATHER`` waits
until that much has passed (``flush`` and ``close`` cut it short), so records arriving
close together share one write and ``fdatasync`` (one per record cost the writer ~0.5 ms
of CPU per C-STORE); a record after a quiet spell is written at once.
When the queue is full a record is dropped and counted, and the writer records
a Security Alert ("Audit Recording Stopped") with the number lost as soon as it
catches up. Forwarding to an audit repository reads the log (``audit_syslog``).
"""
from __future__ import annotations

import atexit
import dataclasses
import getpass
import json
import logging
import multiprocessing.util
import os
import queue
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Protocol

from archive.audit import messages as audit_messages
from archive.audit.log import AuditLogFile

log = logging.getLogger(__name__)
EVENTS = tuple(audit_messages.EVENTS)
#: At most this many SOP Instance UIDs are listed in one message (the count is always exact).
MAX_LISTED_INSTANCES = 200
_TICK = 1.0
#: Seconds between one batch's write and the next, at least, unless flushed (module docstring).
_GATHER = 0.05


class PrincipalLike(Protocol):
    subject: str
    kind: str


@dataclasses.dataclass(frozen=True)
class LocalUser:
    """The operator of a command-line tool, as a principal for the audit trail."""
    subject: str
    kind: str = "local"

    @classmethod
    def current(cls) -> "LocalUser":
        try:
            return cls(getpass.getuser())
        except Exception:  # no login name in some containers
            return cls(f"uid:{os.getuid()}")


class _Record(NamedTuple):
    """What a request thread queues: the message is built by the writer thread, off the request."""
    time: datetime
    event: str
    user: str
    kind: str
    outcome: int
    remote: str | None
    study: str | None
    series: str | None
    listed: list[tuple[str | None, str]]
    count: int
    query: dict[str, Any] | None
    detail: dict[str, Any]
    counts: dict[str, int] | None = None


@dataclasses.dataclass
class _Transfer:
    remote: str | None
    last_flush: float
    frames: int = 0
    sops: set[str] = dataclasses.field(default_factory=set)


class AuditTrail:
    """One per process (held by ``Archive``); records start the writer thread on first use."""

    def __init__(self, settings, data_dir: Path, ae_title: str = ""):
        self.settings = settings
        self.directory = settings.directory_in(data_dir)
        host = socket.gethostname()
        self.source = {"id": settings.source_id or f"slidearchive@{host}", "host": host,
                       "site": settings.enterprise_site_id, "aetitles": f"AETITLES={ae_title}" if ae_title else ""}
        self.dropped = 0
        self.written = 0
        self._pid = -1
        self._at_exit = False

    # --- the API every door calls ---------------------------------------------------

    def record(self, event: str, *, principal: PrincipalLike | None, outcome: int = 0, remote: str | None = None,
               study: str | None = None, series: str | None = None, instances: Iterable[Any] = (),
               query: Mapping[str, Any] | None = None, detail: str | Mapping[str, Any] | None = None) -> None:
        """Queue one audit message; never raises, never waits.

        ``outcome``: 0 success, 4 minor failure, 8 serious failure, 12 major failure.
        ``instances``: SOP Instance UIDs, or (SOP Class UID, SOP Instance UID) pairs.
        ``query``: the query keys and values (values are redacted unless safe).
        ``detail``: a description (no PHI), or a mapping with any of ``type`` (the
        EventTypeCode meaning, e.g. "Application Stop", "Login", "Node Authentication"),
        ``description``, ``destination`` and ``destination_host`` (Export), ``sop_class``
        (Query), ``action`` (an EventActionCode overriding the event's default).
        """
        if not self.settings.enabled:
            return
        try:
            if event not in audit_messages.EVENTS:
                raise ValueError(f"unknown audit event {event!r}")
            listed, count = audit_messages.normalise_instances(instances, MAX_LISTED_INSTANCES)
            details = {"description": detail} if isinstance(detail, str) else dict(detail or {})
            item = _Record(datetime.now(timezone.utc), event, self._subject(principal, event), _kind(principal, event),
                           int(outcome), remote, study, series, listed, count,
                           dict(query) if query is not None else None, details)
            self._queue().put_nowait(item)
        except queue.Full:
            self.dropped += 1
        except Exception as e:  # a caller's mistake must not fail its request
            log.warning("audit record %r not written: %s", event, e)

    def frame(self, principal: PrincipalLike | None, study: str, series: str, sop: str, remote: str | None,
              frames: int = 1) -> None:
        """Count frames sent; the first of a series for a principal records Begin Transferring."""
        if not self.settings.enabled:
            return
        try:
            key = (self._subject(principal, ""), _kind(principal, ""), study, series)
            self._queue()
            with self._lock:
                transfer = self._transfers.get(key)
                begin = transfer is None
                if begin:
                    transfer = self._transfers[key] = _Transfer(remote, time.monotonic())
                transfer.frames += frames
                if len(transfer.sops) < MAX_LISTED_INSTANCES:
                    transfer.sops.add(sop)
            if begin:
                self.record("BeginTransferringDICOMInstances", principal=principal, remote=remote, study=study,
                            series=series, instances=(sop,))
        except Exception as e:
            log.warning("audit frame count failed: %s", e)

    def _subject(self, principal: PrincipalLike | None, event: str) -> str:
        """The principal's subject; without one, the archive itself (its own events) or "anonymous"."""
        if principal is not None:
            return str(principal.subject)
        return self.source["id"] if event == "ApplicationActivity" else "anonymous"

    # --- the writer -----------------------------------------------------------------

    def flush(self, timeout: float = 10) -> bool:
        """Wait until everything queued so far is written (tests, the CLI, process exit)."""
        if self._pid != os.getpid():
            return True
        done = threading.Event()
        try:
            self._q.put(done, timeout=timeout)
            self._hurry.set()
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self) -> None:
        """Write pending frame summaries and everything queued; stop the writer."""
        with _START_LOCK:
            if self._pid != os.getpid():
                return
            self._closing = True
            self.flush()
            self._thread.join(5)
            self._pid = -1  # a later record starts a new writer

    def _closed(self, waiters: list[threading.Event]) -> bool:
        """The writer ends once close() asked and its flush is answered (so ``serve`` can fork without it)."""
        if self._closing and waiters:
            self._file.close()
            return True
        return False

    def _queue(self) -> queue.Queue:
        if self._pid != os.getpid():  # first use in this process (or in a forked child)
            with _START_LOCK:
                if self._pid != os.getpid():
                    self._start()
        return self._q

    def _start(self) -> None:
        self._q: queue.Queue = queue.Queue(self.settings.queue_size)
        self._lock = threading.Lock()
        self._transfers: dict[tuple, _Transfer] = {}
        self._closing = False
        self._hurry = threading.Event()  # set by flush: write what is queued now, without gathering
        self._last_write = 0.0  # time.monotonic() of the last batch written
        self._file = AuditLogFile(self.directory, self.settings.rotate_bytes, self.settings.fsync)
        self._reported_drops = self.dropped
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        if not self._at_exit:  # multiprocessing children (granian's workers) exit without running atexit
            atexit.register(self.close)
            multiprocessing.util.Finalize(self, self.close, exitpriority=10)
            self._at_exit = True
        self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            try:
                items = [self._q.get(timeout=_TICK)]
            except queue.Empty:
                items = []
            since = time.monotonic() - self._last_write
            if items and since < _GATHER and not isinstance(items[0], threading.Event):
                self._hurry.wait(_GATHER - since)  # let the records close behind join this batch
            self._hurry.clear()
            while len(items) < 1000:
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            waiters = [i for i in items if isinstance(i, threading.Event)]
            records = [i for i in items if not isinstance(i, threading.Event)]
            records += self._due_transfers(everything=self._closing)
            records += self._drop_report()
            try:
                self._write(records)
            except Exception as e:  # disk full, permissions: say so, keep serving
                log.error("audit log %s not writable (%s): %d records lost", self.directory, e, len(records))
            closed = self._closed(waiters)
            for w in waiters:
                w.set()
            if closed:
                return

    def _write(self, records: list[_Record]) -> None:
        if not records:
            return
        lines = [json.dumps(self._line(r), separators=(",", ":"), ensure_ascii=False) for r in records]
        self._file.append(("\n".join(lines) + "\n").encode("utf-8"), datetime.now(timezone.utc))
        self._last_write = time.monotonic()
        self.written += len(lines)

    def _line(self, r: _Record) -> dict[str, Any]:
        """The flat fields ``slidearchive audit`` filters on, and the standard message itself."""
        message = audit_messages.build(r.event, time=r.time, user=r.user, kind=r.kind, outcome=r.outcome,
                                       remote=r.remote, study=r.study, series=r.series, instances=r.listed,
                                       query=r.query, detail=r.detail, source=self.source, counts=r.counts)
        line: dict[str, Any] = {"time": message["EventIdentification"]["EventDateTime"], "event": r.event,
                                "user": r.user, "kind": r.kind, "outcome": r.outcome, "remote": r.remote,
                                "study": audit_messages.safe_uid(r.study),
                                "series": audit_messages.safe_uid(r.series), "instances": r.count}
        if r.counts:
            line.update(r.counts)
        line["AuditMessage"] = message
        return line

    def _due_transfers(self, everything: bool) -> list[_Record]:
        """Instances Transferred for each (principal, series) whose interval is over; idle ones end."""
        now = time.monotonic()
        out = []
        with self._lock:
            for key, t in list(self._transfers.items()):
                if not everything and now - t.last_flush < self.settings.frame_interval:
                    continue
                if not t.frames or everything:  # a whole interval without frames: that transfer is over
                    del self._transfers[key]
                if t.frames:
                    user, kind, study, series = key
                    out.append(_Record(datetime.now(timezone.utc), "DICOMInstancesTransferred", user, kind, 0,
                                       t.remote, study, series, [(None, s) for s in sorted(t.sops)], len(t.sops),
                                       None, {}, {"frames": t.frames}))
                    t.frames, t.sops, t.last_flush = 0, set(), now
        return out

    def _drop_report(self) -> list[_Record]:
        lost = self.dropped - self._reported_drops
        if not lost:
            return []
        self._reported_drops = self.dropped
        return [_Record(datetime.now(timezone.utc), "SecurityAlert", self.source["id"], "system", 4, None, None,
                        None, [], 0, None, {"type": "Audit Recording Stopped", "description":
                                            f"{lost} audit records dropped: queue of {self.settings.queue_size} full"})]


_START_LOCK = threading.Lock()


def _kind(principal: PrincipalLike | None, event: str) -> str:
    if principal is not None:
        return str(principal.kind)
    return "system" if event == "ApplicationActivity" else "anonymous"
