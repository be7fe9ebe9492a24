"""archive.dimse.transport's own encoding of plain C-STORE responses: the same bytes as
pynetdicom's encoder, pynetdicom's path whenever it cannot be plain, over real sockets."""
from __future__ import annotations

import queue
import socket
import threading

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import VLWholeSlideMicroscopyImageStorage

from archive.dimse.commit import Commitments
from archive.dimse.transport import (NoDelayAssociationServer, WaitingRequestHandler, encode_store_response,
                                    ignores_store_responses, wait_for_data)

WSI = VLWholeSlideMicroscopyImageStorage


def _response(sop_instance: str, message_id: int, status: int, comment: str | None = None) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = WSI
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    if comment is not None:
        rsp.ErrorComment = comment
    return rsp


def _pynetdicom_bytes(rsp: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return encode(message.command_set, True, True)


@pytest.mark.parametrize("sop_instance, message_id, status", [
    ("1.2.3.4", 1, 0x0000),          # even-length UID
    ("1.2.3.45", 65535, 0xB000),     # odd-length UID (NUL padded), largest message id, a warning
    ("2.25.1234567890123456789012345678901234", 7, 0xC000),  # a longer UID, a failure without a comment
])
def test_plain_response_is_pynetdicoms_bytes(sop_instance, message_id, status):
    rsp = _response(sop_instance, message_id, status)
    assert encode_store_response(rsp) == _pynetdicom_bytes(rsp)


@pytest.mark.parametrize("comment", ["de-identified by policy x", "odd length!", ""])
def test_response_with_a_comment_is_pynetdicoms_bytes(comment):
    rsp = _response("1.2.3.4", 1, 0xB000, comment)
    assert encode_store_response(rsp) == _pynetdicom_bytes(rsp)


def test_response_with_a_non_ascii_comment_or_an_offending_element_is_left_to_pynetdicom():
    assert encode_store_response(_response("1.2.3.4", 1, 0xB000, "Überschrieben")) is None
    rsp = _response("1.2.3.4", 1, 0xA900)
    rsp.OffendingElement = [0x00100010]
    assert encode_store_response(rsp) is None


def _scp(handlers):
    ae = AE(ae_title="TRANSPORT")
    ae.add_supported_context(WSI, ExplicitVRLittleEndian)
    server = ae.make_server(("127.0.0.1", 0), evt_handlers=handlers, server_class=NoDelayAssociationServer,
                            request_handler=WaitingRequestHandler)
    ae._servers.append(server)  # as archive.dimse.listener does; server.shutdown() removes it
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return ae, server


def _store(port: int) -> Dataset:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(WSI, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRANSPORT")
    assert assoc.is_established
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = WSI, generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


@pytest.mark.parametrize("comment", [None, "one comment"])
def test_statuses_reach_a_pynetdicom_peer(comment):
    def handle(event):
        status = Dataset()
        status.Status = 0xB000
        if comment:
            status.ErrorComment = comment
        return status

    ae, server = _scp([(evt.EVT_C_STORE, handle)])
    try:
        answer = _store(server.server_address[1])
        assert answer.Status == 0xB000
        assert answer.get("ErrorComment") == comment
    finally:
        server.shutdown()


def test_a_bound_dimse_sent_handler_still_sees_the_response():
    sent = []
    ae, server = _scp([(evt.EVT_C_STORE, lambda event: 0x0000),
                       (evt.EVT_DIMSE_SENT, lambda event: sent.append(type(event.message).__name__))])
    try:
        assert _store(server.server_address[1]).Status == 0x0000
        assert sent == ["C_STORE_RSP"]
    finally:
        server.shutdown()


def _count_pynetdicom_encodes(monkeypatch) -> list:
    """The UIDs of the C-STORE responses pynetdicom encodes, its own logging handlers
    (bound to EVT_DIMSE_SENT unless switched off, as the listener does) switched off."""
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    encoded = []
    original = C_STORE_RSP.primitive_to_message

    def counting(self, primitive):
        encoded.append(primitive.AffectedSOPInstanceUID)
        return original(self, primitive)

    monkeypatch.setattr(C_STORE_RSP, "primitive_to_message", counting)
    return encoded


def test_a_marked_dimse_sent_handler_keeps_the_direct_path(monkeypatch):
    """The listener binds storage commitment's EVT_DIMSE_SENT handler on every association:
    marked, it must not send C-STORE responses back through pynetdicom's encoder."""
    encoded = _count_pynetdicom_encodes(monkeypatch)
    sent = []
    ae, server = _scp([(evt.EVT_C_STORE, lambda event: 0x0000),
                       (evt.EVT_DIMSE_SENT, ignores_store_responses(lambda event: sent.append(event)))])
    try:
        assert _store(server.server_address[1]).Status == 0x0000
        assert encoded == [] and sent == []
    finally:
        server.shutdown()


def test_an_unmarked_dimse_sent_handler_gets_pynetdicoms_path(monkeypatch):
    encoded = _count_pynetdicom_encodes(monkeypatch)
    ae, server = _scp([(evt.EVT_C_STORE, lambda event: 0x0000), (evt.EVT_DIMSE_SENT, lambda event: None)])
    try:
        assert _store(server.server_address[1]).Status == 0x0000
        assert len(encoded) == 1
    finally:
        server.shutdown()


def test_the_listeners_dimse_sent_handlers_are_marked():
    """Every EVT_DIMSE_SENT handler the listener binds ignores C-STORE responses."""
    assert Commitments.on_sent.ignores_store_responses


class _Timer:
    expired = False


class _DUL:
    """What ``wait_for_data``'s look consults of pynetdicom's DUL, over a socket pair."""

    def __init__(self, raw: socket.socket) -> None:
        self.socket = type("AssociationSocket", (), {"socket": raw, "_is_connected": True,
                                                    "ready": property(lambda s: False)})()
        self.event_queue, self.to_provider_queue = queue.Queue(), None
        self.state_machine = type("FSM", (), {"current_state": "Sta6"})()
        self.artim_timer, self._kill_thread = _Timer(), False
        self.reads = self.looks = 0

    def _is_transport_event(self) -> bool:
        self.looks += 1
        return False

    def _read_pdu_data(self) -> None:
        self.reads += 1

    def run(self) -> None:
        """The DUL thread's body: wait_for_data closes its pipe when it returns."""

    def _process_recv_primitive(self) -> bool:
        if not self.to_provider_queue.queue:
            return False
        self.event_queue.put("Evt9")
        return True


@pytest.fixture()
def waiting_dul():
    ours, peer = socket.socketpair()
    dul = _DUL(ours)
    wait_for_data(dul, 5)
    yield dul, peer
    dul.run()
    ours.close()
    peer.close()


def test_a_primitive_put_while_waiting_is_taken_up_in_the_same_turn(waiting_dul):
    dul, _ = waiting_dul
    threading.Timer(0.05, dul.to_provider_queue.put, ("a P-DATA",)).start()
    assert dul._is_transport_event() is False
    assert dul.event_queue.get_nowait() == "Evt9" and dul.reads == 0 and dul.looks == 1


def test_nothing_is_taken_up_once_the_dul_is_told_to_stop(waiting_dul):
    dul, _ = waiting_dul
    dul._kill_thread = True
    threading.Timer(0.05, dul.to_provider_queue.put, ("a P-DATA",)).start()
    assert dul._is_transport_event() is False
    assert dul.event_queue.empty()


def test_data_seen_arriving_is_read_as_pynetdicoms_look_would(waiting_dul):
    dul, peer = waiting_dul
    peer.sendall(b"\x04\x00\x00\x00\x00\x00")
    assert dul._is_transport_event() is True
    assert (dul.reads, dul.looks) == (1, 0)
    dul.state_machine.current_state = "Sta13"  # closing: pynetdicom's look decides
    assert dul._is_transport_event() is False
    assert (dul.reads, dul.looks) == (1, 1)


def test_a_primitive_put_before_the_look_is_taken_up_in_the_same_turn(waiting_dul):
    dul, _ = waiting_dul
    dul.to_provider_queue.put("a P-DATA")  # after the turn's own look at the send queue
    assert dul._is_transport_event() is False
    assert dul.event_queue.get_nowait() == "Evt9" and dul.looks == 1
