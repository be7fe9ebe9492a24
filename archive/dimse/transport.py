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
  writes a byte to a pipe on every put, so a response is sent at once (in the same
  turn of the loop, not after its 1 ms sleep: ``send_now``); a PDU the wait saw
  arrive is read without pynetdicom selecting once more.
Their other checks (release, abort, timers, a dead connection) still run every ~11 ms.

A plain C-STORE response (a status, the two UIDs, perhaps a comment) is encoded here
(``send_store_responses_directly``): pynetdicom builds a pydicom data set for it and
encodes it twice, 0.7 ms of the association thread per instance; these seven
elements (and an Error Comment) in Implicit VR Little Endian are the same bytes. Any
other message, and any response with an Offending Element, goes through pynetdicom, and
so does every C-STORE response while a handler bound to EVT_DIMSE_SENT may want to
see it (one not marked ``ignores_store_responses``).

A plain C-STORE request is read, and its spool file begun, by ``archive.dimse.spool``
(``receive_stores_directly``) instead of pynetdicom's pydicom decoding.
"""
from __future__ import annotations

import logging
import os
import queue
import select
import socket
import struct
import threading
from typing import Any, Callable, TypeVar

from pynetdicom import _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from archive.dimse.spool import discard_spooled, receive_stores_directly, remove_spool_file
from archive.errors import SOPClassNotSupported
from archive.logs import failure_site

_Handler = TypeVar("_Handler", bound=Callable)
log = logging.getLogger(__name__)

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
        send_store_responses_directly(assoc)
        receive_stores_directly(assoc)
        refuse_stores_of_other_classes(assoc)
        discard_when_done(assoc)
        return assoc


def discard_when_done(assoc: Any) -> None:
    """Remove a C-STORE's spool file once nothing will store it, whichever way that comes about.

    ``handle_store`` removes it when it has stored or refused the instance, and EVT_ABORTED or
    EVT_CONN_CLOSE (``store.discard_partial``) when a transfer breaks off. Two ways escaped both
    and left the file until a restart: a request no handler is called for (one naming no storage
    SOP class, answered by ``refuse_stores_of_other_classes``), and an association whose DUL thread
    failed on a malformed PDU and aborted by itself. By the time a request has been served, or the
    association's thread ends, nothing writes to the file any more."""
    serve, run = assoc._serve_request, assoc.run

    def serve_then_discard(message: Any, context_id: int) -> None:
        try:
            serve(message, context_id)
        finally:
            path = getattr(message, "_dataset_path", None)
            if path is not None and remove_spool_file(message._dataset_file, path):
                log.warning("discarded the data set of a C-STORE request that was not handled")

    def run_then_discard() -> None:
        try:
            run()
        finally:
            if discard_spooled(assoc):
                log.warning("discarded a partial C-STORE left by an association that ended abnormally")

    assoc._serve_request, assoc.run = serve_then_discard, run_then_discard


def refuse_stores_of_other_classes(assoc: Any) -> None:
    """Answer a C-STORE-RQ whose Affected SOP Class UID is no storage SOP class with 0x0122 (SOP
    Class not supported): pynetdicom aborted the association instead, and with it every other
    transfer on it. Any other message is served by pynetdicom as before."""
    serve = assoc._serve_request

    def serve_or_refuse(message: Any, context_id: int) -> None:
        if isinstance(message, C_STORE) and message.is_valid_request and not _names_storage_class(assoc, message):
            _refuse_sop_class(assoc, message, context_id)
        else:
            serve(message, context_id)

    assoc._serve_request = serve_or_refuse


def _names_storage_class(assoc: Any, request: C_STORE) -> bool:
    """Whether pynetdicom serves this C-STORE-RQ as storage (its lookup in ``_serve_request``)."""
    uid = request.AffectedSOPClassUID
    uid = assoc.acceptor.accepted_common_extended.get(uid, (uid,))[0]
    return _config.UNRESTRICTED_STORAGE_SERVICE or uid_to_service_class(uid) is StorageServiceClass


def _refuse_sop_class(assoc: Any, request: C_STORE, context_id: int) -> None:
    log.warning("C-STORE refused: 0x%04X, the request's Affected SOP Class UID is no storage SOP class",
                SOPClassNotSupported.dimse_status)
    response = C_STORE()
    response.MessageIDBeingRespondedTo = request.MessageID
    response.AffectedSOPClassUID = request.AffectedSOPClassUID
    response.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
    response.Status = SOPClassNotSupported.dimse_status
    response.ErrorComment = "Affected SOP Class UID is not a storage SOP class"
    assoc.dimse.send_msg(response, context_id)


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


def send_now(dul: Any) -> None:
    """Take up a primitive put to send while the DUL waited, in this turn of its loop.

    Its loop sleeps 1 ms after a turn with no event and only then looks at its send
    queue: every C-STORE response would wait that long. What its next turn would do
    first is done here (not once the thread is told to stop, nor ahead of an expired
    ARTIM timer's event, which that turn would queue before it, nor behind another event).
    """
    if not dul._kill_thread and not dul.artim_timer.expired and dul.event_queue.empty():
        dul._process_recv_primitive()


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
                ready, _, _ = select.select([raw, readable], [], [], wait)
            except (OSError, ValueError):  # closed meanwhile: pynetdicom's own look reports it
                ready = []
            if readable in ready:
                try:
                    os.read(readable, 4096)
                except OSError:  # drained meanwhile
                    pass
            if raw in ready and sock._is_connected and dul.state_machine.current_state != "Sta13":
                dul._read_pdu_data()  # what pynetdicom's look does next, its own select skipped
                return True
        if look():
            return True
        send_now(dul)  # also for one put after this turn's own look at the send queue
        return False

    dul._is_transport_event = is_transport_event
    run = dul.run

    def run_then_close() -> None:
        try:
            run()
        except Exception as e:  # noqa: BLE001 - pynetdicom's state machine failed on what the peer sent
            abort_after_failure(dul, e)
        finally:
            sends.close()
            os.close(readable)

    dul.run = run_then_close


#: A-ABORT (PS3.8 9.3.8): source 2, the service provider; reason 0, not specified.
_A_ABORT = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0))


def abort_after_failure(dul: Any, e: Exception) -> None:
    """Send the peer an A-ABORT when pynetdicom's DUL thread failed on a message it sent.

    pynetdicom's state machine stops on an exception it did not expect (a command set it cannot
    read, say) and the connection was then closed without a word: the peer could not tell a
    refusal from a network fault. The log says where it failed, never the message's values."""
    log.warning("DIMSE message from %s could not be read (%s at %s): association aborted",
                getattr(dul.assoc.requestor, "ae_title", "?"), type(e).__name__, failure_site(e))
    raw = getattr(dul.socket, "socket", None)
    if raw is not None:
        try:
            raw.sendall(_A_ABORT)
        except OSError:  # the peer has gone already
            pass


#: C-STORE-RSP (PS3.7 9.3.1.2): Command Field, and Command Data Set Type "no data set".
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101


def _element(group_element: int, value: bytes) -> bytes:
    """One element, Implicit VR Little Endian (PS3.5 7.1.3)."""
    return struct.pack("<HHI", group_element >> 16, group_element & 0xFFFF, len(value)) + value


def _ui(group_element: int, uid: str) -> bytes:
    """A UI element, padded with NUL to an even length (PS3.5 6.2)."""
    value = uid.encode("ascii")
    return _element(group_element, value + b"\0" if len(value) % 2 else value)


def _lo(group_element: int, text: str) -> bytes:
    """An LO element in the default repertoire, padded with a space to an even length (PS3.5 6.2)."""
    value = text.encode("ascii")
    return _element(group_element, value + b" " if len(value) % 2 else value)


def _us(group_element: int, value: int) -> bytes:
    return _element(group_element, struct.pack("<H", value))


def encode_store_response(primitive: C_STORE) -> bytes | None:
    """The command set of a plain C-STORE response, or None when pynetdicom must encode it.

    Plain: the UIDs, message id and status set, an Error Comment at most (the warning a
    de-identified instance gets), no Offending Element.
    """
    sop_class, sop_instance = primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID
    responding_to, status = primitive.MessageIDBeingRespondedTo, primitive.Status
    comment = primitive.ErrorComment
    if (sop_class is None or sop_instance is None or responding_to is None or status is None
            or primitive.OffendingElement is not None):
        return None
    try:
        elements = [_ui(0x00000002, sop_class), _us(0x00000100, _C_STORE_RSP),
                    _us(0x00000120, responding_to), _us(0x00000800, _NO_DATA_SET), _us(0x00000900, status)]
        if comment is not None:
            elements.append(_lo(0x00000902, comment))
        elements.append(_ui(0x00001000, sop_instance))
    except (UnicodeEncodeError, struct.error):  # not ASCII, or out of range: pynetdicom says what is wrong
        return None
    body = b"".join(elements)
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


def ignores_store_responses(handler: _Handler) -> _Handler:
    """Mark an EVT_DIMSE_SENT handler that has nothing to do with C-STORE responses.

    A response sent by ``send_store_responses_directly`` fires no EVT_DIMSE_SENT (the
    event hands out pynetdicom's message object, which is never made), so it is sent
    directly only while every handler bound to that event is marked so.
    """
    handler.ignores_store_responses = True
    return handler


def _store_responses_unwatched(assoc: Any) -> bool:
    return all(getattr(handler, "ignores_store_responses", False)
               for handler, _ in assoc.get_handlers(evt.EVT_DIMSE_SENT))


def send_store_responses_directly(assoc: Any) -> None:
    """Send plain C-STORE responses encoded by ``encode_store_response`` (module docstring).

    Only while no EVT_DIMSE_SENT handler wants them (``ignores_store_responses``) and
    the command fits in one PDU (a few hundred bytes; the smallest PDU a peer may ask
    for is larger).
    """
    dimse = assoc.dimse
    encode_and_send = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        if isinstance(primitive, C_STORE) and _store_responses_unwatched(assoc):
            command = encode_store_response(primitive)
            limit = dimse.maximum_pdu_size
            if command is not None and (not limit or len(command) + 6 <= limit):
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, b"\x03" + command))  # last command fragment
                dimse.dul.send_pdu(pdata)
                return
        encode_and_send(primitive, context_id)

    dimse.send_msg = send_msg
