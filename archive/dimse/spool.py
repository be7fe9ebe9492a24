"""How a plain C-STORE request is taken in: its command set read and its spool file's
File Meta written without pydicom, in the DUL thread.

pynetdicom decodes each received command set into a pydicom data set, copies it onto
the C-STORE primitive element by element, and writes the spool file's File Meta
Information by building a pydicom File Meta data set and encoding it: about 0.4 ms
of the DUL thread per small instance, most of its Python work per C-STORE. A plain
C-STORE-RQ (the elements PS3.7 9.3.1.1 gives it but a Move Originator AE Title, in
Implicit VR Little Endian, one value each, well-formed UIDs, a data set following)
is read here into the same primitive, and its File Meta is written as the same
bytes (Explicit VR Little Endian, PS3.10 7.1). The data set fragments go to the
spool file as pynetdicom writes them (each written and flushed), and the message's
state is kept where ``discard_partial`` looks for it (``dimse.message._data_set_file``).

Anything else (another message, an unexpected element, a command split over
fragments, a command fragment among the data set's, an EVT_DIMSE_RECV handler that
wants pynetdicom's message object, chunked receive turned off) goes through
pynetdicom as before; a message begun here is handed over with the state pynetdicom
would have had by then.
"""
from __future__ import annotations

import os
import re
import struct
from io import BytesIO
from pathlib import Path
from tempfile import NamedTemporaryFile
from typing import Any

from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config, evt
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import P_DATA

#: (0000,0100) Command Field of a C-STORE-RQ, and (0000,0800) "no data set".
_C_STORE_RQ = 0x0001
_NO_DATA_SET = 0x0101

#: The elements read here: tag -> the primitive's attribute (None: not one of its parameters).
_UIDS = {0x00000002: "AffectedSOPClassUID", 0x00001000: "AffectedSOPInstanceUID"}
_NUMBERS = {0x00000100: None, 0x00000110: "MessageID", 0x00000700: "Priority", 0x00000800: None,
            0x00001031: "MoveOriginatorMessageID"}
_GROUP_LENGTH = 0x00000000
_PRIORITY = 0x00000700  # LOW 2, MEDIUM 0, HIGH 1 (PS3.7 9.3.1.1)

#: A UID every validation accepts (PS3.5 9.1): at most 64 characters, no leading zeros.
_VALID_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")

_ELEMENT = struct.Struct("<HHI")


class _Command:
    """A C-STORE-RQ command set as read here: its bytes and the primitive's parameters."""

    __slots__ = ("encoded", "parameters", "command_field", "data_set_type")

    def __init__(self, encoded: bytes) -> None:
        self.encoded = encoded
        self.parameters: list[tuple[str, Any]] = []
        self.command_field: int | None = None
        self.data_set_type: int | None = None


def read_store_command(encoded: bytes) -> _Command | None:
    """The parameters of a plain C-STORE-RQ with a data set, or None for pynetdicom to decode.

    Kept in tag order, as pynetdicom sets them from its decoded data set.
    """
    command = _Command(encoded)
    offset, end, previous = 0, len(encoded), -1
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = _ELEMENT.unpack_from(encoded, offset)
        tag = group << 16 | element
        value = encoded[offset + 8:offset + 8 + length]
        offset += 8 + length
        if tag <= previous or len(value) != length:
            return None
        previous = tag
        if tag == _GROUP_LENGTH:
            if length != 4:
                return None
        elif tag in _NUMBERS:
            if length != 2:
                return None
            number = value[0] | value[1] << 8
            if tag == _PRIORITY and number not in (0, 1, 2):
                return None  # pynetdicom's primitive refuses it: its path aborts the association
            if tag == 0x00000100:
                command.command_field = number
            elif tag == 0x00000800:
                command.data_set_type = number
            else:
                command.parameters.append((_NUMBERS[tag], number))
        elif tag in _UIDS:
            try:
                uid = value.decode("ascii").rstrip("\0 ")
            except UnicodeDecodeError:
                return None
            if len(uid) > 64 or not _VALID_UID.fullmatch(uid):
                return None
            command.parameters.append((_UIDS[tag], UID(uid)))
        else:
            return None
    if command.command_field != _C_STORE_RQ or command.data_set_type in (None, _NO_DATA_SET):
        return None
    names = {name for name, _ in command.parameters}
    if not {"AffectedSOPClassUID", "AffectedSOPInstanceUID", "MessageID"} <= names:
        return None
    return command


def _explicit(group_element: int, vr: bytes, value: bytes) -> bytes:
    """One element in Explicit VR Little Endian with a 2-byte length (PS3.5 7.1.2)."""
    return struct.pack("<HH2sH", group_element >> 16, group_element & 0xFFFF, vr, len(value)) + value


def _uid(group_element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    return _explicit(group_element, b"UI", value + b"\0" if len(value) % 2 else value)


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, prefix and File Meta Information of a spool file, as pynetdicom writes them."""
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    body = b"".join((
        struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
        _uid(0x00020002, sop_class), _uid(0x00020003, sop_instance), _uid(0x00020010, transfer_syntax),
        _uid(0x00020012, PYNETDICOM_IMPLEMENTATION_UID),
        _explicit(0x00020013, b"SH", version + b" " if len(version) % 2 else version),
    ))
    return b"\0" * 128 + b"DICM" + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body


class SpooledStore:
    """A C-STORE-RQ being received into its spool file (``dimse.message`` meanwhile)."""

    def __init__(self, command: _Command, context_id: int, transfer_syntax: str) -> None:
        self.command = command
        self.context_id = context_id
        sop_class, sop_instance = (dict(command.parameters)[k] for k in ("AffectedSOPClassUID",
                                                                          "AffectedSOPInstanceUID"))
        self._data_set_file = NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
        self._data_set_path: Path | None = Path(self._data_set_file.name)
        self._data_set_file.write(file_meta(sop_class, sop_instance, transfer_syntax))

    def primitive(self) -> C_STORE:
        """The primitive pynetdicom's ``message_to_primitive`` makes of this message."""
        primitive = C_STORE()
        for name, value in self.command.parameters:
            setattr(primitive, name, value)
        primitive.DataSet = BytesIO()
        primitive._context_id = self.context_id
        primitive._dataset_path = self._data_set_path
        primitive._dataset_file = self._data_set_file
        return primitive

    def handed_over(self) -> DIMSEMessage:
        """The pynetdicom message in the state its own decoding would have left by now."""
        message = DIMSEMessage()
        message.encoded_command_set.write(self.command.encoded)
        message.command_set = decode(message.encoded_command_set, True, True)
        message.__class__ = C_STORE_RQ
        message.context_id = self.context_id
        message._data_set_file = self._data_set_file
        message._data_set_path = self._data_set_path
        return message


def receive_stores_directly(assoc: Any) -> None:
    """Take plain C-STORE requests in with ``SpooledStore`` (module docstring)."""
    dimse = assoc.dimse
    receive = dimse.receive_primitive

    def receive_primitive(primitive: P_DATA) -> None:
        message = dimse.message
        if message is None:
            if (primitive.__class__ is not P_DATA or not _config.STORE_RECV_CHUNKED_DATASET
                    or assoc.get_handlers(evt.EVT_DIMSE_RECV)):
                return receive(primitive)
            pdvs = primitive.presentation_data_value_list
            if not pdvs or not pdvs[0][1] or pdvs[0][1][0] & 3 != 3:  # not a whole command
                return receive(primitive)
            context_id, data = pdvs[0]
            command = read_store_command(data[1:])
            context = assoc._accepted_cx.get(context_id)
            if command is None or context is None:
                return receive(primitive)
            message = dimse.message = SpooledStore(command, context_id, context.transfer_syntax[0])
            pdvs = pdvs[1:]
        elif message.__class__ is SpooledStore:
            pdvs = primitive.presentation_data_value_list
        else:
            return receive(primitive)
        for index, (context_id, data) in enumerate(pdvs):
            control = data[0]
            if control & 1:  # a command fragment within the data set: pynetdicom's to handle
                dimse.message = message.handed_over()
                rest = P_DATA()
                rest.presentation_data_value_list.extend(pdvs[index:])
                return receive(rest)
            message._data_set_file.write(data[1:])
            message._data_set_file.file.flush()
            if control & 2:
                dimse.msg_queue.put((message.context_id, message.primitive()))
                dimse.message = None
                return None
        return None

    dimse.receive_primitive = receive_primitive


def discard_spooled(assoc: Any) -> bool:
    """Remove the spool file of a C-STORE that did not arrive in full (pynetdicom's message or one
    begun here keep it at ``dimse.message._data_set_file``); True when there was one to remove."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    spooled = getattr(message, "_data_set_file", None)
    return spooled is not None and remove_spool_file(spooled, spooled.name)


def remove_spool_file(file: Any, path: str | Path) -> bool:
    """Close ``file`` and remove it from the spool; False when it was no longer there."""
    try:
        file.close()
    except OSError:
        pass
    try:
        os.unlink(path)
    except FileNotFoundError:  # stored (moved) or removed already
        return False
    return True
