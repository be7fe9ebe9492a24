"""How the DIMSE listener accepts connections: Nagle off, and association threads that
wait for work instead of polling for it.

pynetdicom runs two loops per association, each sleeping 1 ms and then looking for
work without blocking, a thousand times a second for as long as the association is
open: about 40 ms of CPU per second per idle association here (Orthanc: 3), and each
wake-up takes the GIL from the handler storing an instance. Their looks are made to
wait instead, so each loop turns about 90 times a second when idle and work is taken
up the moment it arrives:
- the association (acceptor) thread's look for a decoded DIMSE message
  (``DIMSEServiceProvider.get_msg(block=False)``, called by that loop alone) waits up
  to ``WAIT`` for the next message; blocking looks (a C-GET waiting for its
  sub-operations' responses) are unchanged;
- the DUL thread's look for incoming data (``_is_transport_event``) waits up to
  ``WAIT`` in ``select`` for the socket, or for a primitive to send: its send queue
  writes a byte to a pipe on every put, so a response is sent at once.
Their other checks (release, abort, timers, a dead connection) still run every ~11 ms.
"""
from __future__ import annotations

import os
import queue
import select
import socket
import threading
from typing import Any

from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

#: The longest either loop waits for work before its other checks (seconds).
WAIT = 0.01


class NoDelayAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with Nagle's algorithm off on each accepted connection.

    DIMSE is request/response in small PDUs: with Nagle on, a second small write (a
    C-FIND match after the first, a response after a command fragment) waits for the
    peer's delayed ACK, up to 40 ms on Linux, whatever the archive does meanwhile.
    """

    def get_request(self):
        sock, address = super().get_request()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (a test's socketpair) or already closed: nothing to tune
            pass
        return sock, address


class WaitingRequestHandler(RequestHandler):
    """pynetdicom's handler, its association's two loops made to wait (module docstring)."""

    def _create_association(self):
        assoc = super()._create_association()
        wait_for_messages(assoc.dimse, WAIT)
        wait_for_data(assoc.dul, WAIT)
        return assoc


def wait_for_messages(dimse: Any, wait: float) -> None:
    """Make ``dimse.get_msg(block=False)`` wait up to ``wait`` seconds for a message."""
    blocking = dimse.get_msg

    def get_msg(block: bool = False):
        if block:
            return blocking(block=True)
        try:
            return dimse.msg_queue.get(timeout=wait)
        except queue.Empty:
            return None, None

    dimse.get_msg = get_msg


class _WakingQueue(queue.Queue):
    """A queue that writes a byte to ``wake`` (a pipe) on every put, until ``close``."""

    def __init__(self, wake: int) -> None:
        super().__init__()
        self._wake: int | None = wake
        self._wake_lock = threading.Lock()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        with self._wake_lock:
            if self._wake is not None:
                try:
                    os.write(self._wake, b"\0")
                except OSError:  # the pipe is full: the reader is already woken
                    pass

    def close(self) -> None:
        """Stop writing (under the lock: a closed descriptor's number may be reused at once)."""
        with self._wake_lock:
            if self._wake is not None:
                os.close(self._wake)
                self._wake = None


def wait_for_data(dul: Any, wait: float) -> None:
    """Make the DUL's look for incoming data wait up to ``wait`` for the socket or a primitive to send.

    Called before the DUL thread starts (nothing is queued yet); the pipe is closed when it ends.
    """
    readable, writable = os.pipe()
    os.set_blocking(readable, False)
    os.set_blocking(writable, False)
    sends = _WakingQueue(writable)
    dul.to_provider_queue = sends
    look = dul._is_transport_event

    def is_transport_event() -> bool:
        sock = dul.socket
        raw = getattr(sock, "socket", None)
        if raw is not None and not sends.queue and dul.event_queue.empty() and not sock.ready:
            try:
                select.select([raw, readable], [], [], wait)
            except (OSError, ValueError):  # closed meanwhile: pynetdicom's own look reports it
                pass
            try:
                os.read(readable, 4096)
            except OSError:  # nothing to drain
                pass
        return look()

    dul._is_transport_event = is_transport_event
    run = dul.run

    def run_then_close() -> None:
        try:
            run()
        finally:
            sends.close()
            os.close(readable)

    dul.run = run_then_close
