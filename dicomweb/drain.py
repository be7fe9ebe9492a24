"""Graceful stop inside an HTTP worker.

Granian stops accepting connections when its worker gets SIGTERM/SIGINT and lets
requests in progress finish. This module learns when that began (the C signal
handler writes the signal number to a wakeup pipe, whoever handles the signal in
Python), so that requests arriving on kept-alive connections are refused (503) and
a STOW-RS still receiving ``stop_timeout`` seconds later is refused cleanly: its
spool file is removed, nothing of the instance is stored. It also makes the worker
die with its supervisor.

A worker must get one stop signal, not two: granian's handler, entered again while it
runs (a second SIGTERM), deadlocks the worker. So the watch sends its own SIGTERM only
where the kernel will not (no prctl), and starts the hard bound (``exit_after``) itself
once the supervisor is gone, whether or not a signal got through. Should granian hang
anyway (a second signal from elsewhere), holding the GIL, ``exit_after`` cannot run:
SIGALRM, left at its default action, ends the process in the kernel a second later.
"""
from __future__ import annotations

import math
import os
import select
import signal
import threading
import time
from typing import BinaryIO

from archive.errors import ShuttingDown
from archive.lifecycle import KILL_GRACE, die_with_parent, exit_after

_began: float | None = None
_timeout = 30.0
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def install(stop_timeout: float, supervisor_pid: int) -> None:
    """Call once, in the worker's main thread, before granian installs its signal handlers.

    A stop signal that arrives before granian's handlers are in place (while the app is
    being built) would be lost, so it is kept and sent again once they are.
    """
    global _timeout
    _timeout = stop_timeout
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _early)
    kernel_signals = die_with_parent(supervisor_pid)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read_end, supervisor_pid, kernel_signals), name="drain-watch",
                     daemon=True).start()


_pending: set[int] = set()


def _early(signum: int, frame) -> None:
    _pending.add(signum)


def _watch(read_end: int, supervisor_pid: int, kernel_signals: bool) -> None:
    while True:
        ready, _, _ = select.select([read_end], [], [], 0.2)
        if ready and _STOP_SIGNALS & set(os.read(read_end, 64)):
            begin()
        if os.getppid() != supervisor_pid and not draining():
            begin()
            if not kernel_signals:  # the kernel's SIGTERM (prctl) is on its way otherwise
                os.kill(os.getpid(), signal.SIGTERM)
        if _pending and signal.getsignal(signal.SIGTERM) is not _early:  # granian's handlers are in place
            os.kill(os.getpid(), _pending.pop())
            _pending.clear()  # one stop signal is enough, and two would hang granian


def begin() -> None:
    global _began
    if _began is None:
        _began = time.monotonic()
        exit_after(_timeout + KILL_GRACE)
        signal.alarm(math.ceil(_timeout + KILL_GRACE) + 1)  # the bound that needs no GIL


def draining() -> bool:
    return _began is not None


def overdue() -> bool:
    return _began is not None and time.monotonic() - _began > _timeout


class _Guarded:
    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def read(self, size: int = -1) -> bytes:
        if overdue():
            raise ShuttingDown(f"the server is shutting down and this upload did not finish within "
                               f"{_timeout:g} s; nothing of the unfinished instance was stored, send it again")
        return self.stream.read(size)


def guard(stream: BinaryIO) -> BinaryIO:
    """``stream`` whose reads fail with ShuttingDown once the drain time is over."""
    return _Guarded(stream)  # type: ignore[return-value]
