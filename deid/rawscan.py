"""A byte-level look inside a not-yet-parsed sequence: does anything in it need the profile?

A level's Per-Frame Functional Groups Sequence can hold 100,000 items. Parsing them
into pydicom Datasets (and writing them back) costs seconds; reading the element
headers costs a fraction of that. When no element inside the sequence is listed in
Table E.1-1, private, a UID, or free text the walk would clean, the raw bytes are
kept as they are, which is also exactly what was received.

The scan is conservative: anything it cannot read (big endian, undefined-length
non-sequence values, truncated data) makes it answer "needs the full walk".
"""
from __future__ import annotations

import struct
from typing import Callable

from pydicom.datadict import dictionary_VR

_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHI")
_U32 = struct.Struct("<I")
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})
UNDEFINED = 0xFFFFFFFF

_IMPLICIT_VR: dict[int, str] = {}


def _implicit_vr(tag: int) -> str:
    vr = _IMPLICIT_VR.get(tag)
    if vr is None:
        try:
            vr = str(dictionary_VR(tag)).split(" or ")[0]
        except KeyError:
            vr = "UN"
        _IMPLICIT_VR[tag] = vr
    return vr


def needs_walk(value: bytes, implicit: bool, actionable: Callable[[int, str], bool]) -> bool:
    """True unless every element header inside `value` (a sequence's content) is inert."""
    if implicit:
        return _needs_walk_implicit(value, actionable)
    pos, end = 0, len(value)
    # tag -> (is SQ, long header) once the tag is known to be inert
    inert: dict[int, tuple[bool, bool]] = {}
    header = _EXPLICIT.unpack_from
    u32 = _U32.unpack_from
    try:
        while pos < end:
            group, elem, raw_vr, length = header(value, pos)
            if group == 0xFFFE:  # item / delimiters: step into or over the 8-byte header
                pos += 8
                continue
            tag = (group << 16) | elem
            known = inert.get(tag)
            if known is None:
                vr = raw_vr.decode("ascii")
                if actionable(tag, vr):
                    return True
                known = (vr == "SQ", raw_vr in _LONG_VRS)
                inert[tag] = known
            is_sq, is_long = known
            if is_long:
                if is_sq:
                    pos += 12  # the items follow: keep scanning inside them
                    continue
                length = u32(value, pos + 8)[0]
                if length == UNDEFINED:
                    return True
                pos += 12 + length
            else:
                pos += 8 + length
    except (struct.error, UnicodeDecodeError):
        return True
    return pos != end


def _needs_walk_implicit(value: bytes, actionable: Callable[[int, str], bool]) -> bool:
    pos, end = 0, len(value)
    inert: dict[int, bool] = {}
    header = _IMPLICIT.unpack_from
    try:
        while pos < end:
            group, elem, length = header(value, pos)
            if group == 0xFFFE:
                pos += 8
                continue
            tag = (group << 16) | elem
            is_sq = inert.get(tag)
            if is_sq is None:
                vr = _implicit_vr(tag)
                if actionable(tag, vr):
                    return True
                is_sq = vr == "SQ"
                inert[tag] = is_sq
            if is_sq:
                pos += 8
                continue
            if length == UNDEFINED:
                return True
            pos += 8 + length
    except struct.error:
        return True
    return pos != end
