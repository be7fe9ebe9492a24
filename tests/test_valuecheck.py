"""The header check judged from bytes gives the same verdict as converting every element through pydicom.

``archive.valuecheck`` settles most elements from their bytes and leaves the rest to
pydicom. Here every verdict (accepted, or the error type and message) is compared with
the reference: convert every element, sequences included, and judge it as the check
did before (``reference``). The inputs are real files with mutations anywhere in the
header, inside sequence items too: a VR replaced, a value or its length changed.
"""
from __future__ import annotations

import functools
import io
import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings, strategies as st
from pydicom.datadict import DicomDictionary

from archive.errors import ArchiveError
from archive.rawitems import LONG_VRS
from archive.valuecheck import check_values
from conftest import SHARED_DATA

PYDICOM_DATA = Path(pydicom.__file__).parent / "data"
SEEDS = [Path(SHARED_DATA) / "sm_image.dcm", Path(SHARED_DATA) / "sm_annotations.dcm",
         PYDICOM_DATA / "test_files" / "CT_small.dcm", PYDICOM_DATA / "test_files" / "MR_small_implicit.dcm"]
NUMERIC = {"US", "UL", "SS", "SL", "UV", "SV", "FL", "FD", "IS", "DS"}


def reference(ds: pydicom.Dataset) -> None:
    """The check as it was: convert everything, then judge VR and VM of standard elements and the
    numbers of every IS element (pydicom keeps an IS it cannot read as text)."""
    for _ in ds.file_meta.iterall():
        pass
    for elem in ds.iterall():
        entry = DicomDictionary.get(elem.tag)
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if entry is not None and elem.VR != "UN" and " or " not in entry[0]:
            if elem.VR != entry[0]:
                raise ArchiveError(f"{name} has VR {elem.VR[:2]}, the data dictionary says {entry[0]}")
            if entry[1] == "1" and entry[0] in NUMERIC and elem.VM > 1:
                raise ArchiveError(f"{name} has {elem.VM} values, the data dictionary says 1")
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        if elem.VR == "IS" and not all(v in (None, "") or isinstance(v, int)
                                       or (isinstance(v, float) and v.is_integer()) for v in values):
            raise ArchiveError(f"{name} has a value that is not an integer string (VR IS)")


def verdict(check, data: bytes) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about what the mutations did
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - unreadable before any check: not what is compared
            return "unreadable"
        return _judged(check, ds)


def _judged(check, ds: pydicom.Dataset) -> str:
    try:
        check(ds)
    except ArchiveError as e:
        return f"refused: {e}"
    except Exception as e:  # noqa: BLE001 - pydicom's conversion errors: read_header names the type
        return f"refused: {type(e).__name__}"
    return "accepted"


def element_headers(data: bytes) -> tuple[list[int], set[int]]:
    """Offsets of every element header before the pixel data, inside sequence items too, and
    those at the top level (explicit VR little endian; empty for other encodings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - mutated beyond reading: no further mutation
            return [], set()
    if ds.file_meta.TransferSyntaxUID.is_implicit_VR:
        return [], set()
    pos = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    out, top, ends = [], set(), []  # ends: where the enclosing sequences end
    while pos + 8 <= len(data):
        while ends and pos >= ends[-1]:
            ends.pop()
        group, elem = struct.unpack_from("<HH", data, pos)
        if (group << 16 | elem) >= 0x7FE00000 and not ends:
            break
        if group == 0xFFFE:  # item or delimiter: step into it
            pos += 8
            continue
        out.append(pos)
        if not ends:
            top.add(pos)
        vr = data[pos + 4:pos + 6]
        if vr == b"SQ":
            length = struct.unpack_from("<I", data, pos + 8)[0]
            pos += 12
            ends.append(len(data) if length == 0xFFFFFFFF else pos + length)
        elif vr in LONG_VRS:
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return out, top


VRS = [b"US", b"SS", b"UL", b"FL", b"FD", b"IS", b"DS", b"CS", b"LO", b"UI", b"PN", b"UN", b"AT", b"ZZ", b"\0\0"]
VALUES = [b"", b"\x01", b"\x01\x00\x02", b"1e999", b"1\\2", b"abc", b"12345678", b"-7 ", b"1.5", b"\xff\xfe", b"inf"]


def mutated(data: bytes, at: int, top: bool, kind: str, arg: bytes) -> bytes:
    """The VR or the value of the element at ``at`` replaced.

    Headers keep their size (a long-VR header is not turned into a short one: that is a
    structural change, which the fuzz tests of the server cover), and values inside
    sequence items keep their length, so that the enclosing lengths stay right.
    """
    vr = data[at + 4:at + 6]
    if kind == "vr":
        if (vr in LONG_VRS) != (arg in LONG_VRS):
            return data
        return data[:at + 4] + arg + data[at + 6:]
    if vr in LONG_VRS:
        return data
    length = struct.unpack_from("<H", data, at + 6)[0]
    value = arg + b" " * (len(arg) % 2)
    if not top:
        value = (value + b" " * length)[:length]
    return data[:at + 6] + struct.pack("<H", len(value)) + value + data[at + 8 + length:]


@functools.cache
def seed_bytes() -> list[bytes]:
    return [path.read_bytes() for path in SEEDS]


def test_unmutated_seeds_agree() -> None:
    for data in seed_bytes():
        assert verdict(check_values, data) == verdict(reference, data) == "accepted"


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, len(SEEDS) - 1), picks=st.lists(
    st.tuples(st.integers(0, 10_000), st.sampled_from(["vr", "value"]), st.sampled_from(VRS + VALUES)),
    min_size=1, max_size=3))
def test_same_verdict_as_full_conversion(seed, picks) -> None:
    data = seed_bytes()[seed]
    for index, kind, arg in picks:
        headers, top = element_headers(data)
        if not headers:
            break
        at = headers[index % len(headers)]
        data = mutated(data, at, at in top, kind, arg)
    assert verdict(check_values, data) == verdict(reference, data)


def _at(data: bytes, tag: int, nested: bool) -> tuple[int, bool]:
    headers, top = element_headers(data)
    at = next(h for h in headers if struct.unpack_from("<HH", data, h) == (tag >> 16, tag & 0xFFFF)
              and (h not in top) == nested)
    return at, at in top


@pytest.mark.parametrize("tag, nested, kind, arg, message", [
    (0x00480006, False, "vr", b"SH", "TotalPixelMatrixColumns has VR SH, the data dictionary says UL"),
    (0x00480006, False, "value", struct.pack("<II", 256, 256), "TotalPixelMatrixColumns has 2 values"),
    (0x00280010, False, "vr", b"UL", "refused: BytesLengthException"),  # two bytes as UL
    (0x00080100, True, "vr", b"LO", "CodeValue has VR LO, the data dictionary says SH"),
    (0x00209164, True, "vr", b"LO", "DimensionOrganizationUID has VR LO, the data dictionary says UI"),
    (0x00280008, False, "value", b"\x01", "NumberOfFrames has a value that is not an integer string"),
])
def test_known_refusals(tag, nested, kind, arg, message) -> None:
    """Top level and inside sequence items: the attribute is named, as before."""
    seed = seed_bytes()[0]
    at, top = _at(seed, tag, nested)
    bad = mutated(seed, at, top, kind, arg)
    assert verdict(check_values, bad) == verdict(reference, bad)
    assert message in verdict(check_values, bad)


def test_a_sequence_judged_before_is_judged_the_same() -> None:
    """Sequences found fine are remembered by their bytes (a series repeats them): the same
    bytes under a tag whose dictionary VR is not SQ are still refused, and a sequence with
    a bad item is refused every time, not only the first."""
    seed = seed_bytes()[0]
    assert verdict(check_values, seed) == "accepted"
    assert verdict(check_values, seed) == "accepted"  # now from the remembered digests
    at, top = _at(seed, 0x00400560, False)  # Specimen Description Sequence (SQ, 3960 bytes)
    renamed = seed[:at] + struct.pack("<HH", 0x0040, 0x0551) + seed[at + 4:]  # Specimen Identifier (LO)
    assert verdict(check_values, renamed) == verdict(reference, renamed) != "accepted"
    code_at, code_top = _at(seed, 0x00080100, True)
    bad = mutated(seed, code_at, code_top, "vr", b"LO")
    for _ in range(2):
        assert "CodeValue has VR LO" in verdict(check_values, bad)
