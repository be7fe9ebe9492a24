"""The items of an encoded sequence value, read from its bytes (explicit VR little endian).

Reading a sequence through pydicom builds a Dataset and a DataElement per element,
which was most of the CPU of storing a small instance. The header check
(``valuecheck``) and DICOM JSON (``dicomjson``) read the bytes here instead and
leave anything unusual (``Unusual``) to pydicom.
"""
from __future__ import annotations

import struct

#: VRs with a 4-byte length after two reserved bytes in explicit VR (PS3.5 Table 7.1-1).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
UNDEFINED = 0xFFFFFFFF
_HEADER = struct.Struct("<HH2sH")
_U32 = struct.Struct("<I")

Element = tuple[int, str, bytes]  # (tag, VR, value)


class Unusual(Exception):
    """Bytes this reader leaves to pydicom (undefined-length non-sequence values, stray tags, ...)."""


def items(value: bytes) -> list[list[Element]]:
    """The items of an encoded explicit VR little endian sequence value, as (tag, VR, value) lists.

    Raises Unusual (or struct.error / UnicodeDecodeError for bytes cut short) for anything
    but items of elements; a nested sequence's value is returned whole (items and delimiters).
    """
    out, pos, end = [], 0, len(value)
    while pos < end:
        group, elem, _, _ = _HEADER.unpack_from(value, pos)
        length = _U32.unpack_from(value, pos + 4)[0]
        pos += 8
        if (group, elem) == (0xFFFE, 0xE0DD):
            break
        if (group, elem) != (0xFFFE, 0xE000):
            raise Unusual
        if length == UNDEFINED:
            elements, pos = _elements(value, pos, end, until_delimiter=True)
        else:
            if pos + length > end:
                raise Unusual
            elements, _ = _elements(value, pos, pos + length, until_delimiter=False)
            pos += length
        out.append(elements)
    return out


def _elements(value: bytes, pos: int, end: int, until_delimiter: bool) -> tuple[list[Element], int]:
    out = []
    while pos < end:
        group, elem, raw_vr, short = _HEADER.unpack_from(value, pos)
        if group == 0xFFFE:
            if elem == 0xE00D and until_delimiter:
                return out, pos + 8
            raise Unusual
        if raw_vr in LONG_VRS:
            length = _U32.unpack_from(value, pos + 8)[0]
            pos += 12
        else:
            length = short
            pos += 8
        vr = raw_vr.decode("ascii")
        if length == UNDEFINED:
            if vr != "SQ":
                raise Unusual
            start = pos
            pos = _skip_undefined_sequence(value, pos, end)
            out.append(((group << 16) | elem, vr, value[start:pos]))
            continue
        if pos + length > end:
            raise Unusual
        out.append(((group << 16) | elem, vr, value[pos:pos + length]))
        pos += length
    if until_delimiter:
        raise Unusual  # no item delimiter
    return out, pos


def _skip_undefined_sequence(value: bytes, pos: int, end: int) -> int:
    """Position after the sequence delimiter of an undefined-length sequence starting at ``pos``."""
    while pos < end:
        group, elem, _, _ = _HEADER.unpack_from(value, pos)
        length = _U32.unpack_from(value, pos + 4)[0]
        pos += 8
        if (group, elem) == (0xFFFE, 0xE0DD):
            return pos
        if (group, elem) != (0xFFFE, 0xE000):
            raise Unusual
        if length == UNDEFINED:
            _, pos = _elements(value, pos, end, until_delimiter=True)
        else:
            pos += length
    raise Unusual
