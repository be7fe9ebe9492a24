"""The header check: every value must convert, and standard elements must agree with the data dictionary.

Standard elements must carry the data dictionary's VR (UN and the dictionary's "US or
SS" kind excepted) and numbers their single value where the dictionary says VM 1: the
catalog, QIDO, the frame index and the search index all read them as the dictionary
defines them. A value pydicom cannot convert (a US of three bytes, an IS of 1e999)
fails here, as a clear refusal, not deep in ingest.

Most elements are judged from their bytes (``_fine``): VR, length and the few characters
that matter, without building a pydicom element. Converting every element of every
sequence through pydicom was about 7 ms of CPU per small instance, more than all the rest
of storing it. Whatever the bytes do not settle (implicit VR, UN, big endian, a sequence
that is not plain items, a value that might not convert or has too many values) is
converted by pydicom and judged as before, so an element is refused exactly when full
conversion refused it, with the same error.
"""
from __future__ import annotations

import hashlib
import re
import struct

from pydicom.datadict import DicomDictionary
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from archive.errors import DatasetDoesNotMatchSOPClass
from archive.rawitems import Unusual, items
from archive.recent import Recent

_NUMERIC_VRS = frozenset({"US", "UL", "SS", "SL", "UV", "SV", "FL", "FD", "IS", "DS"})
_BINARY_SIZE = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8}
#: VRs whose conversion never fails: text (decoded with replacement), bytes, tags.
_ALWAYS = frozenset({"AE", "AS", "AT", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR",
                     "UT", "OB", "OD", "OF", "OL", "OV", "OW"})
_INTEGERS = re.compile(rb"[ \x00]*[+-]?[0-9]+[ \x00]*")  # one plain integer string, padding allowed


def check_values(ds: Dataset) -> None:
    """Raise DatasetDoesNotMatchSOPClass (or pydicom's conversion error) for the first bad element.

    Elements are judged in tag order, sequences depth first, as converting them all would.
    Values stay as read (raw): writing and DICOM JSON then copy them instead of re-encoding.
    """
    for _ in ds.file_meta.iterall() if hasattr(ds, "file_meta") else ():
        pass  # converted (a value that cannot be fails), not judged: the meta is rebuilt on write
    table = ds._dict
    # (int, element) pairs: BaseTag's own comparison is Python code, and the tags are unique,
    # so the elements are never compared
    for tag, elem in sorted(zip(map(int, table), table.values())):
        if isinstance(elem, RawDataElement):
            vr, value = elem.VR, elem.value
            if vr is not None and elem.is_little_endian and value is not None \
                    and (_fine(tag, vr, value) if vr != "SQ" else _fine_top(tag, vr, value)):
                continue
        _check_element(ds[tag])


#: Sequences already judged fine, by the digest of their bytes: the instances of a series carry
#: the same sequences byte for byte, and stepping through every item was most of this check.
#: Digests, not bytes: nothing received stays in memory.
_FINE_SEQUENCES: Recent[bytes, bool] = Recent(1024)


def _fine_top(tag: int, vr: str, value: bytes) -> bool:
    """``_fine`` for a top-level element, remembering the sequences found fine (the verdict on a
    sequence's items depends on its bytes alone; its own VR against the dictionary is judged each time)."""
    if vr != "SQ" or len(value) < 256:
        return _fine(tag, vr, value)
    digest = hashlib.sha256(value).digest()
    if _FINE_SEQUENCES.get(digest):
        return _fine(tag, vr, b"")  # the dictionary's VR still checked; the items were fine
    fine = _fine(tag, vr, value)
    if fine:
        _FINE_SEQUENCES.put(digest, True)
    return fine


def _fine(tag: int, vr: str, value: bytes) -> bool:
    """True when this explicit VR little endian element converts cleanly and agrees with the dictionary.

    False means "not settled here": pydicom converts it and judges it.
    """
    entry = DicomDictionary.get(tag)
    if entry is not None and vr != entry[0] and " or " not in entry[0]:
        return False
    single = entry is not None and entry[1] == "1"
    if vr in _ALWAYS:
        return True
    size = _BINARY_SIZE.get(vr)
    if size is not None:
        return len(value) % size == 0 and not (single and len(value) > size)
    if vr == "DS":  # never fails to convert (kept as text when not a number)
        return not (single and b"\\" in value)
    if vr == "IS":  # "1e999" fails (float infinity to int); plain integers never do
        if single and b"\\" in value:
            return False
        return all(not part.strip(b" \x00") or _INTEGERS.fullmatch(part) for part in value.split(b"\\"))
    if vr == "SQ":
        try:
            return all(_fine(t, v, val) for item in items(value) for t, v, val in item)
        except (Unusual, struct.error, UnicodeDecodeError):
            return False
    return False  # UN (pydicom may give it the dictionary's VR), unknown VRs


def _check_element(elem) -> None:
    """Judge one converted element and, for a sequence, everything inside it."""
    entry = DicomDictionary.get(elem.tag)
    if entry is not None and elem.VR != "UN" and " or " not in entry[0]:
        vr, vm = entry[0], entry[1]
        if elem.VR != vr:
            raise DatasetDoesNotMatchSOPClass(f"{_name(elem)} has VR {elem.VR[:2]}, the data dictionary says {vr}")
        if vm == "1" and vr in _NUMERIC_VRS and elem.VM > 1:
            raise DatasetDoesNotMatchSOPClass(f"{_name(elem)} has {elem.VM} values, the data dictionary says 1")
    if elem.VR == "IS" and not all(map(_integer, elem.value if elem.VM > 1 else [elem.value])):
        # pydicom keeps what it cannot read as a number as text (warning): the frame index, the
        # catalog and the search index would fail on it later
        raise DatasetDoesNotMatchSOPClass(f"{_name(elem)} has a value that is not an integer string (VR IS)")
    if elem.VR == "SQ":
        for item in elem.value:
            _convert_all(item)


def _integer(value: object) -> bool:
    """An IS value pydicom read as a number (an ``IS``, or an ``ISfloat`` with no fraction), or empty."""
    return value is None or value == "" or isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _convert_all(ds: Dataset) -> None:
    for tag in sorted(ds._dict, key=int):
        _check_element(ds[tag])


def _name(elem) -> str:
    return elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
