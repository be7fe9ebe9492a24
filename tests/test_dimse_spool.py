"""archive.dimse.spool's intake of plain C-STORE requests: the same primitive and the same
spool file bytes as pynetdicom's own decoding, message by message and fragment by fragment,
and pynetdicom's path for everything it does not read."""
from __future__ import annotations

import io
import queue
import tempfile
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode, write_file_meta_info
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import VLWholeSlideMicroscopyImageStorage

from archive.dimse.spool import SpooledStore, file_meta, read_store_command, receive_stores_directly

WSI = VLWholeSlideMicroscopyImageStorage
DATA = bytes(range(256)) * 70  # 17 920 bytes: two data fragments at storescu's 16 kB PDUs
PARAMETERS = ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
              "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID", "_context_id")


class _Context:
    transfer_syntax = [ExplicitVRLittleEndian]


class _Assoc:
    """What pynetdicom's receive_primitive consults of an association."""

    def __init__(self, handlers: list | None = None) -> None:
        self._accepted_cx = {1: _Context(), 3: _Context()}
        self._handlers = handlers or []
        self.dimse = _Dimse(self)

    def get_handlers(self, event: Any) -> list:
        return self._handlers if event is evt.EVT_DIMSE_RECV else []



class _Dimse:
    """The DIMSE provider's state that receive_primitive uses, with pynetdicom's method."""

    def __init__(self, assoc: _Assoc) -> None:
        self.assoc, self.message, self.msg_queue, self.cancel_req = assoc, None, queue.Queue(), {}
        self.dul = type("DUL", (), {"event_queue": queue.Queue()})()
        self.receive_primitive = DIMSEServiceProvider.receive_primitive.__get__(self)


@pytest.fixture(autouse=True)
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    return tmp_path


#: A C-STORE-RQ command set (None leaves an element out).
COMMAND = {"CommandGroupLength": 0, "AffectedSOPClassUID": WSI, "CommandField": 0x0001, "MessageID": 7,
           "Priority": 0, "CommandDataSetType": 0x0001,
           "AffectedSOPInstanceUID": "1.2.826.0.1.3680043.8.498.1234567"}


def _command(**elements: Any) -> bytes:
    cs = Dataset()
    for keyword, value in {**COMMAND, **elements}.items():
        if value is not None:
            setattr(cs, keyword, value)
    cs.CommandGroupLength = len(encode(cs, True, True)) - 12
    return encode(cs, True, True)


def _pdata(*pdvs: tuple[int, bytes]) -> P_DATA:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [list(pdv) for pdv in pdvs]
    return primitive


def _storescu(command: bytes, data: bytes = DATA, context: int = 1, size: int = 16372) -> list[P_DATA]:
    """A command PDU, then the data set in fragments of ``size``, as DCMTK's storescu sends them."""
    chunks = [data[i:i + size] for i in range(0, len(data), size)]
    return [_pdata((context, b"\x03" + command))] + [
        _pdata((context, (b"\x02" if i == len(chunks) - 1 else b"\x00") + chunk)) for i, chunk in enumerate(chunks)]


def _receive(patched: bool, pdatas: list[P_DATA], handlers: list | None = None) -> tuple[_Dimse, list, Any]:
    """Feed ``pdatas``; the queued messages (spool bytes read at once) and any exception raised."""
    assoc = _Assoc(handlers)
    if patched:
        receive_stores_directly(assoc)
    got: list = []
    try:
        for pdata in pdatas:
            assoc.dimse.receive_primitive(pdata)
    except Exception as e:  # noqa: BLE001 - both paths must fail alike
        failure: Any = type(e)
    else:
        failure = None
    while not assoc.dimse.msg_queue.empty():
        context_id, primitive = assoc.dimse.msg_queue.get()
        spooled = None
        if primitive._dataset_file is not None:
            primitive._dataset_file.close()
            spooled = primitive._dataset_path.read_bytes()
            primitive._dataset_path.unlink()
        got.append((context_id, type(primitive), [getattr(primitive, p, None) for p in PARAMETERS],
                    getattr(primitive, "DataSet", None) and primitive.DataSet.getvalue(),
                    type(primitive._dataset_file), spooled))
    return assoc.dimse, got, failure


CASES = {
    "storescu": _storescu(_command()),
    "odd uids": _storescu(_command(AffectedSOPInstanceUID="1.2.3.45", MessageID=65535, Priority=2)),
    "one fragment": _storescu(_command(), data=DATA[:100]),
    "in one pdata": [_pdata((3, b"\x03" + _command()), (3, b"\x00" + DATA[:10]), (3, b"\x02" + DATA[10:]))],
    "two in a row": _storescu(_command()) + _storescu(_command(MessageID=8, AffectedSOPInstanceUID="1.2.3.4")),
    "move originator id": _storescu(_command(MoveOriginatorMessageID=3)),
    "move originator ae": _storescu(_command(MoveOriginatorApplicationEntityTitle="MOVER", MoveOriginatorMessageID=3)),
    "uid with a leading zero": _storescu(_command(AffectedSOPInstanceUID="1.2.93.4").replace(b"1.2.93.4", b"1.2.03.4")),
    "uid padded with a space": _storescu(_command(AffectedSOPInstanceUID="1.2.3.45").replace(b"1.2.3.45\0", b"1.2.3.45 ")),
    "no data set": [_pdata((1, b"\x03" + _command(CommandDataSetType=0x0101)))],
    "echo": [_pdata((1, b"\x03" + _command(CommandField=0x0030, CommandDataSetType=0x0101)))],
    "command in two fragments": [_pdata((1, b"\x01" + _command()[:20])), _pdata((1, b"\x03" + _command()[20:])),
                                 _pdata((1, b"\x02" + DATA))],
    "command among the data": _storescu(_command())[:2] + [_pdata((1, b"\x03" + _command(MessageID=9)))],
    "data before any command": [_pdata((1, b"\x02" + DATA))],
    "unknown context": _storescu(_command(), context=5),
    "truncated command": [_pdata((1, b"\x03" + _command()[:-3]))],
    "no sop instance": _storescu(_command(AffectedSOPInstanceUID=None)),
    "priority out of range": _storescu(_command(Priority=5)),
}


@pytest.mark.parametrize("name", CASES)
def test_same_messages_and_spool_files_as_pynetdicom(name: str) -> None:
    their_dimse, theirs, their_failure = _receive(False, CASES[name])
    our_dimse, ours, our_failure = _receive(True, CASES[name])
    assert ours == theirs
    assert our_failure is their_failure
    assert list(our_dimse.dul.event_queue.queue) == list(their_dimse.dul.event_queue.queue)  # Evt19: an abort


def test_plain_requests_are_read_here() -> None:
    assert read_store_command(_command()) is not None
    assert read_store_command(_command(MoveOriginatorMessageID=3)) is not None
    for elements in ({"MoveOriginatorApplicationEntityTitle": "MOVER"}, {"CommandDataSetType": 0x0101},
                     {"CommandField": 0x0030}, {"MessageID": None}):
        assert read_store_command(_command(**elements)) is None


def test_partial_transfer_left_where_discard_partial_looks() -> None:
    """Mid-transfer, ``dimse.message._data_set_file`` holds what pynetdicom's would."""
    pdatas = _storescu(_command())[:2]
    theirs, _, _ = _receive(False, pdatas)
    ours, _, _ = _receive(True, pdatas)
    assert isinstance(ours.message, SpooledStore)
    spooled = []
    for dimse in (theirs, ours):
        dimse.message._data_set_file.close()
        spooled.append(Path(dimse.message._data_set_file.name).read_bytes())
    assert spooled[0] == spooled[1]


def test_an_event_handler_gets_pynetdicom_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list = []
    monkeypatch.setattr(evt, "trigger", lambda assoc, event, attrs: seen.append((event, type(attrs["message"]))))
    dimse, got, failure = _receive(True, _storescu(_command()), handlers=[(print, None)])
    assert failure is None and len(got) == 1 and dimse.message is None
    assert seen == [(evt.EVT_DIMSE_RECV, C_STORE_RQ)]


@pytest.mark.parametrize("sop_class, sop_instance, syntax", [
    (WSI, "1.2.3.4", ExplicitVRLittleEndian), (WSI, "1.2.3.45", ImplicitVRLittleEndian),
    ("1.2.840.10008.5.1.4.1.1.7", "1.2.826.0.1.3680043.8.498." + "1" * 37, "1.2.840.10008.1.2.4.50"),
])
def test_file_meta_same_bytes_as_pynetdicom(sop_class: str, sop_instance: str, syntax: str) -> None:
    theirs = io.BytesIO()
    theirs.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(theirs, create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance,
                                                  transfer_syntax=syntax))
    assert file_meta(sop_class, sop_instance, syntax) == theirs.getvalue()


def test_handed_over_message_is_pynetdicoms() -> None:
    stored = SpooledStore(read_store_command(_command()), 1, ExplicitVRLittleEndian)
    message = stored.handed_over()
    assert type(message) is C_STORE_RQ and message.command_set.MessageID == 7
    assert message._data_set_file is stored._data_set_file
    stored._data_set_file.close()
    primitive = message.message_to_primitive()
    assert isinstance(primitive, C_STORE)
    assert [getattr(primitive, p, None) for p in PARAMETERS] == [
        getattr(stored.primitive(), p, None) for p in PARAMETERS]
