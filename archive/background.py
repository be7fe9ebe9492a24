"""The background process of ``slidearchive serve``: the DIMSE listener, the index worker and,
with S3 storage, the removal of deleted instances' objects (archive/storage/removals.py).

It tells the supervisor over a pipe whether it started (``("ready", ports)`` or
``("failed", message)``), then writes a heartbeat (``<data_dir>/run/background.json``)
every second for ``/health/ready`` (with a shared catalog, also whether the other nodes'
DIMSE tables match this one's: archive/nodeconfig.py). If a component dies inside it, the process exits
non-zero so the supervisor restarts it: it never goes on without one. On SIGTERM or
SIGINT, or when the supervisor is gone, it drains (archive.dimse.listener.DimseListener.drain).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from archive.config import Settings
from archive.lifecycle import KILL_GRACE, RunFiles, die_with_parent, exit_after, listen_error, watch_parent

log = logging.getLogger(__name__)
HEARTBEAT_INTERVAL = 1.0
#: Exit statuses the supervisor reports.
EXIT_START_FAILED = 2
EXIT_COMPONENT_DIED = 3


def main(settings: Settings, parent_pid: int, report: Any) -> None:
    """Process entry point (multiprocessing target); ``report`` is the write end of a Pipe."""
    die_with_parent(parent_pid)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    watch_parent(parent_pid, stop.set)
    from archive.logs import quiet_libraries

    quiet_libraries()
    from archive.audit.syslog import start as start_forwarder
    from archive.logs import configure

    configure(settings.logging, settings.data_dir)
    start_forwarder(settings.audit, settings.data_dir)
    worker = _start_index_worker(settings)
    sweeper = _start_removals(settings)
    listener = None
    if settings.dimse.enabled:
        from archive.dimse.listener import DimseListener

        try:
            listener = DimseListener(settings)
        except OSError as e:
            report.send(("failed", listen_error(settings.host, getattr(e, "port", settings.dimse.port), e)))
            sys.exit(EXIT_START_FAILED)
    from archive import nodeconfig

    heartbeat = Heartbeat(settings, parent_pid, listener, worker, nodeconfig.start(settings), sweeper)
    heartbeat.beat()
    report.send(("ready", listener.ports if listener else []))
    report.close()
    code = 0
    while not stop.wait(HEARTBEAT_INTERVAL):
        problem = heartbeat.beat()
        if problem:
            log.error("%s; the background process exits so that the supervisor restarts it", problem)
            code = EXIT_COMPONENT_DIED
            break
    heartbeat.beat("draining")
    exit_after(settings.stop_timeout + KILL_GRACE, code or 1)
    if listener is not None:
        listener.drain(time.monotonic() + settings.stop_timeout, KILL_GRACE / 2)
    if worker is not None:
        worker.stop(KILL_GRACE / 2)
    if sweeper is not None:
        sweeper.stop(KILL_GRACE / 2)
    if heartbeat.config_check is not None:
        heartbeat.config_check.stop()
    heartbeat.beat("stopped")
    sys.exit(code)


def _start_index_worker(settings: Settings):
    try:
        from indexer.worker import start_worker
    except ImportError:
        return None
    from archive.catalog import Catalog
    from archive.storage import open_storage

    storage = open_storage(settings)  # headers read from the stored files when they are local files
    return start_worker(settings, Catalog.open(settings, storage.local_path if storage.kind == "local" else None))


def _start_removals(settings: Settings):
    """The sweeper of deleted instances' objects: S3 only (local files are removed at once)."""
    if not settings.storage.is_s3:
        return None
    from archive.catalog import Catalog
    from archive.storage import open_storage
    from archive.storage.removals import Sweeper

    return Sweeper(Catalog.open(settings).db, open_storage(settings))


class Heartbeat:
    """What this process reports about its components, written for the HTTP workers to read."""

    def __init__(self, settings: Settings, parent_pid: int, listener, worker, config_check=None, sweeper=None):
        self.run = RunFiles(settings.data_dir)
        self.parent_pid, self.listener, self.worker, self.sweeper = parent_pid, listener, worker, sweeper
        self.config_check = config_check  # archive/nodeconfig.py: None unless the catalog is shared

    def beat(self, state: str = "running") -> str | None:
        """Write the heartbeat; returns what died, if a component did."""
        dimse: dict[str, Any] = {"enabled": self.listener is not None}
        problem = None
        if self.listener is not None:
            dimse.update(ok=self.listener.healthy(), ports=self.listener.ports,
                         associations=self.listener.associations())
            if state == "running" and not dimse["ok"]:
                problem = "the DIMSE listener stopped"
        index = self._index()
        if state == "running" and index.get("enabled") and not index["ok"]:
            problem = problem or "the index worker stopped"
        if state == "running" and self.sweeper is not None and not self.sweeper.thread.is_alive():
            problem = problem or "the removal of deleted instances' objects stopped"
        self.run.write(self.run.background, {"pid": os.getpid(), "supervisor": self.parent_pid, "time": time.time(),
                                             "state": state, "dimse": dimse, "index": index,
                                             "configuration": self.config_check.check() if self.config_check
                                             else None})
        return problem

    def _index(self) -> dict[str, Any]:
        w = self.worker
        if w is None:
            return {"enabled": False}
        out: dict[str, Any] = {"enabled": True, "ok": w.alive(), "backend": w.index.name.split(":")[0],
                               "last_error": w.last_error, "last_success": w.last_success}
        try:
            cursor = w.state.cursor(w.index.name)
            lag, oldest = w.catalog.outbox_pending(cursor)
            out.update(cursor=cursor, lag_events=lag, oldest_pending=oldest)
        except Exception as e:  # noqa: BLE001 - a busy catalog must not stop the heartbeat
            out["lag_error"] = type(e).__name__
        return out
