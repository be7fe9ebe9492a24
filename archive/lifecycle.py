"""Process lifecycle shared by the ``serve`` supervisor and its children (standard library only).

The supervisor must never leave a half-dead archive behind: children die with it
(``die_with_parent`` + ``watch_parent``), ports are checked before anything reports
ready (``busy_port``), one data directory has one server (``lock_data_dir``), and
the processes tell each other how they are through small JSON files in
``<data_dir>/run`` (``RunFiles``), which ``/health/ready`` reads.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
#: Seconds a child may take after its stop deadline to finish what it already received
#: (an ingest in progress) before it is killed.
KILL_GRACE = 10.0
#: The environment variable holding the supervisor's pid, so HTTP workers know whom to report to.
SUPERVISOR_ENV = "SLIDEARCHIVE_SUPERVISOR_PID"


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux prctl).

    Returns whether the kernel will; if not, the caller's parent watch must send it.
    A parent that died before the call is caught by the ``getppid`` check.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
            if not armed:
                log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError):
            log.warning("prctl is not available; relying on the parent watch alone")
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)
    return armed


def watch_parent(parent_pid: int, on_gone: Callable[[], None], interval: float = 0.5) -> threading.Thread:
    """A daemon thread calling ``on_gone`` once the parent process is gone (the portable belt)."""
    def run() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        log.warning("the supervisor (pid %d) is gone; stopping", parent_pid)
        on_gone()

    thread = threading.Thread(target=run, name="parent-watch", daemon=True)
    thread.start()
    return thread


def exit_after(seconds: float, code: int = 1) -> threading.Thread:
    """A daemon thread ending the process after ``seconds``, whatever is still running (the hard bound)."""
    def run() -> None:
        time.sleep(max(0.0, seconds))
        log.error("stop took longer than %.0f s; exiting now", seconds)
        os._exit(code)

    thread = threading.Thread(target=run, name="stop-bound", daemon=True)
    thread.start()
    return thread


def busy_port(host: str, port: int) -> str | None:
    """None if ``host:port`` can be listened on now, else the message saying why not.

    Bound without SO_REUSEPORT, so a port another server holds (granian binds with
    SO_REUSEPORT, which would otherwise let two archives share it) counts as busy.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are not "busy"
            s.bind((host, port))
            s.listen(1)
    except OSError as e:
        return listen_error(host, port, e)
    return None


def listen_error(host: str, port: int, e: OSError) -> str:
    reason = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e)).lower()
    return f"cannot listen on {host}:{port} ({reason})"


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data directory for this server's life; returns the fd.

    Children inherit the descriptor, so the lock lasts until the last process of this
    server is gone. Raises RuntimeError naming the holder when another server has it.
    """
    run = RunFiles(data_dir)
    run.dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run.dir / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RuntimeError(f"the data directory {data_dir} is in use by another slidearchive serve "
                           f"(pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


class RunFiles:
    """``<data_dir>/run``: supervisor.json (the supervisor's view) and background.json (heartbeat)."""

    def __init__(self, data_dir: Path):
        self.dir = Path(data_dir) / "run"
        self.supervisor = self.dir / "supervisor.json"
        self.background = self.dir / "background.json"

    @staticmethod
    def write(path: Path, record: dict[str, Any]) -> None:
        """Atomic replace; a full disk or a vanished directory is logged, never raised."""
        temp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            temp.write_text(json.dumps(record))
            os.replace(temp, path)
        except OSError as e:
            log.warning("cannot write %s: %s", path.name, e.strerror)
            temp.unlink(missing_ok=True)

    @staticmethod
    def read(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
