"""The stored header encoded element by element: the bytes of pydicom's ``dcmwrite``, faster.

pydicom's ``dcmwrite`` was a quarter of the CPU of a C-STORE of a small instance: it
deep-copies the file meta, and its per-element writer builds a buffer, a cast and a
handful of checks for every element, also for the raw ones it only copies. Most
elements of a de-identified header are still raw (the bytes as received, in the
encoding being written), so here a raw element is copied as tag, VR, length and its
value bytes; a parsed sequence (rebuilt by the profile) is walked here item by item
the same way; every other parsed element goes through pydicom's own per-element
writer (``pydicom.filewriter.write_data_element``), so the encoding rules stay
pydicom's. Which data sets are re-encoded, the ambiguous-VR correction, group
lengths, item and sequence lengths and delimiters follow pydicom's ``write_dataset``
and ``write_file_meta_info`` step for step. Anything unusual (big endian, deflate,
a private or missing transfer syntax, a raw element in another encoding than the
one written, a value too long for its length field) is left to pydicom itself, so
the bytes are always those ``dcmwrite(..., enforce_file_format=True)`` writes; the
tests compare both on every kind of header the archive stores.
"""
from __future__ import annotations

import copy
import struct
from pathlib import Path
from typing import BinaryIO

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.multival import MultiValue
from pydicom.filewriter import correct_ambiguous_vr, dcmwrite, write_data_element, write_dataset
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_GROUP_LENGTH = 0x00020000
_TAG = struct.Struct("<HH")
_US = struct.Struct("<H")
_UL = struct.Struct("<L")
_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_LONG_VRS = frozenset(EXPLICIT_VR_LENGTH_32)
_PLAIN = frozenset({str, UID, bytes, int, type(None)})
_PLAIN_ITEMS = frozenset({str, int})
#: Encoded parsed elements remembered (emptied when full); values longer than MEMO_VALUE are not.
MEMO_ENTRIES = 4096
MEMO_VALUE = 256
_MEMO: dict[tuple, bytes] = {}


class Unusual(Exception):
    """Something this encoder leaves to pydicom (the bytes would be pydicom's anyway)."""


def write_file(target: Path | BinaryIO, ds: Dataset) -> None:
    """Write preamble, file meta and ``ds`` to ``target`` as ``dcmwrite(target, ds,
    enforce_file_format=True)`` would, byte for byte (and with the same changes to ``ds``)."""
    try:
        data = encode_file(ds)
    except Unusual:
        dcmwrite(target, ds, enforce_file_format=True)
        return
    if isinstance(target, Path):
        with open(target, "wb") as f:
            f.write(data)
    else:
        target.write(data)


def encode_file(ds: Dataset) -> memoryview:
    """The Part 10 file of ``ds``: the bytes ``dcmwrite`` with ``enforce_file_format`` writes.

    Raises Unusual for what is left to pydicom; the changes to ``ds`` made before (the
    ones dcmwrite makes too: raw elements parsed, ambiguous VRs corrected) are harmless
    to ``dcmwrite`` writing it then.
    """
    if any(tag >> 16 in (0, 2) for tag in ds._dict):
        raise Unusual  # command or file meta elements in the data set: pydicom's error
    preamble = getattr(ds, "preamble", None)
    if preamble and len(preamble) != 128:
        raise Unusual
    meta = _meta_copy(getattr(ds, "file_meta", None))
    ts = meta.get("TransferSyntaxUID", None)
    implicit = _encoding(ts)
    meta_class, ds_class = meta.get("MediaStorageSOPClassUID", None), ds.get("SOPClassUID", None)
    if meta_class is None or (ds_class and ds_class != meta_class):
        meta.MediaStorageSOPClassUID = ds_class
    meta_instance, ds_instance = meta.get("MediaStorageSOPInstanceUID", None), ds.get("SOPInstanceUID", None)
    if meta_instance is None or (ds_instance and ds_instance != meta_instance):
        meta.MediaStorageSOPInstanceUID = ds_instance
    validate_file_meta(meta, enforce_standard=True)  # adds version and implementation; raises as dcmwrite does
    if "PixelData" in ds:
        ds["PixelData"].is_undefined_length = ts.is_compressed
    out = DicomBytesIO()
    out.write(preamble or b"\x00" * 128)
    out.write(b"DICM")
    _write_file_meta(out, meta)
    out.is_implicit_VR, out.is_little_endian = implicit, True
    _dataset(out, ds, default_encoding, implicit)
    return out.parent.getbuffer()


def encode_elements(ds: Dataset, ts: UID, parent_encoding: str | list[str]) -> bytes:
    """The elements of ``ds`` in transfer syntax ``ts``, as ``pydicom.filewriter.write_dataset``
    encodes them (the elements after the pixel data)."""
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = ts.is_implicit_VR, ts.is_little_endian
    if fp.is_little_endian:
        try:
            _dataset(fp, ds, parent_encoding, fp.is_implicit_VR)
            return fp.getvalue()
        except Unusual:
            fp = DicomBytesIO()
            fp.is_implicit_VR, fp.is_little_endian = ts.is_implicit_VR, ts.is_little_endian
    write_dataset(fp, ds, parent_encoding)
    return fp.getvalue()


def encode_element(elem: DataElement, encodings, implicit: bool, little_endian: bool) -> bytes:
    """One element as ``pydicom.filewriter.write_data_element`` encodes it."""
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little_endian
    if little_endian:
        try:
            _element(fp, elem, encodings, implicit)
            return fp.getvalue()
        except Unusual:
            fp = DicomBytesIO()
            fp.is_implicit_VR, fp.is_little_endian = implicit, little_endian
    write_data_element(fp, elem, encodings)
    return fp.getvalue()


def _encoding(ts: UID | None) -> bool:
    """Implicit VR or not, for the little endian transfer syntaxes done here."""
    if ts is None or ts.is_private or not ts.is_transfer_syntax or ts.is_deflated or not ts.is_little_endian:
        raise Unusual
    return ts.is_implicit_VR


def _meta_copy(file_meta: FileMetaDataset | None) -> FileMetaDataset:
    """A copy of the file meta that writing may change (dcmwrite deep-copies it), cheaply:
    the elements are shallow copies, raw ones (immutable) shared."""
    meta = FileMetaDataset()
    if file_meta is None:
        return meta
    for tag, elem in file_meta._dict.items():
        meta._dict[tag] = elem if isinstance(elem, RawDataElement) else copy.copy(elem)
    meta.set_original_encoding(*file_meta.original_encoding, file_meta.original_character_set)
    meta._parent_encoding = file_meta._parent_encoding
    return meta


def _write_file_meta(out: DicomBytesIO, meta: FileMetaDataset) -> None:
    """The file meta group in explicit VR little endian, its group length first (PS3.10 7.1)."""
    if "FileMetaInformationGroupLength" not in meta:
        meta.FileMetaInformationGroupLength = 0
    elif meta.get_item(_GROUP_LENGTH).VR != "UL" or len(_element_bytes(meta.get_item(_GROUP_LENGTH))) != 12:
        raise Unusual
    out.is_implicit_VR, out.is_little_endian = False, True
    start = out.tell()
    _dataset(out, meta, default_encoding, False)
    end = out.tell()
    out.seek(start)
    out.write(b"\x02\x00\x00\x00UL\x04\x00" + _UL.pack(end - start - 12))
    out.seek(end)


def _element_bytes(elem) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_data_element(fp, elem)
    return fp.getvalue()


def _dataset(out: DicomBytesIO, ds: Dataset, parent_encoding, implicit: bool) -> None:
    """``write_dataset``: raw elements copied when the data set is written as it was read."""
    again = ds.original_encoding != (implicit, True) or ds.original_character_set != ds._character_set
    if again:  # every element parsed and encoded again, as pydicom does
        ds = correct_ambiguous_vr(ds, True)
    encodings = ds.get("SpecificCharacterSet", parent_encoding)
    elements = ds._dict
    for tag in sorted(elements, key=int):  # plain ints compare in C, tags in Python
        if not tag & 0xFFFF and tag >> 16 > 6:
            continue  # retired group lengths are not written (PS3.5 7.2)
        elem = elements[tag]
        if again:
            elem = ds[tag]
        elif type(elem) is RawDataElement and elem.value is None:
            elem = ds.get_item(tag)  # a deferred value: read, as pydicom's get_item does
        _element(out, elem, encodings, implicit)


def _element(out: DicomBytesIO, elem, encodings, implicit: bool) -> None:
    """``write_data_element``: raw and sequence elements here, the others through pydicom."""
    if isinstance(elem, RawDataElement):
        _raw(out, elem, implicit)
    elif elem.VR == "SQ":
        _sequence(out, elem, encodings, implicit)
    else:
        _parsed(out, elem, encodings, implicit)


def _parsed(out: DicomBytesIO, elem: DataElement, encodings, implicit: bool) -> None:
    """A parsed element through pydicom's writer, its bytes remembered when they depend on
    nothing but the key (the profile's dummies, empty values, pseudonyms of a series)."""
    key = _memo_key(elem, encodings, implicit)
    data = _MEMO.get(key) if key is not None else None
    if data is not None:
        out.write(data)
        return
    start = out.tell()
    write_data_element(out, elem, encodings)
    if key is not None:
        out.seek(start)
        data = out.read()
        if len(_MEMO) >= MEMO_ENTRIES:
            _MEMO.clear()
        _MEMO[key] = data


def _memo_key(elem: DataElement, encodings, implicit: bool) -> tuple | None:
    """What pydicom's writer output depends on, for plain values; None for anything else.

    Only values of exact built-in types (and UID): a PersonName, a date or a number string
    may carry the string it was read from, which the writer prefers; floats are left out
    (0.0 and -0.0 are equal keys but different bytes).
    """
    value = elem.value
    kind = type(value)
    if kind in _PLAIN:
        if kind is not int and kind is not type(None) and len(value) > MEMO_VALUE:
            return None
        key_value = value
    elif kind is MultiValue or kind is list:
        if len(value) > 16 or any(type(v) not in _PLAIN_ITEMS for v in value):
            return None
        key_value = tuple((type(v), v) for v in value)
    else:
        return None
    if elem.is_undefined_length:
        return None
    charset = encodings if encodings is None or isinstance(encodings, str) else tuple(encodings)
    return elem.tag, elem.VR, kind, key_value, charset, implicit


def _raw(out: DicomBytesIO, elem: RawDataElement, implicit: bool) -> None:
    value, vr = elem.value, elem.VR
    if (type(value) is not bytes or elem.is_implicit_VR != implicit or elem.is_little_endian is not True
            or (not implicit and vr and len(vr) != 2)):
        raise Unusual
    undefined = elem.length == _UNDEFINED
    if undefined and elem.tag == _PIXEL_DATA:
        raise Unusual  # pydicom checks the encapsulation
    out.write(_TAG.pack(elem.tag >> 16, elem.tag & 0xFFFF))
    if implicit:
        out.write(_UL.pack(_UNDEFINED if undefined else len(value)))
    elif vr in _LONG_VRS:
        out.write(bytes(vr, default_encoding) + b"\x00\x00" + _UL.pack(_UNDEFINED if undefined else len(value)))
    elif undefined:
        out.write(bytes(vr, default_encoding) + _UL.pack(_UNDEFINED))
    elif len(value) > 0xFFFF:
        raise Unusual  # pydicom writes it as UN
    else:
        out.write(bytes(vr, default_encoding) + _US.pack(len(value)))
    out.write(value)
    if undefined:
        out.write(_SEQUENCE_DELIMITER)


def _sequence(out: DicomBytesIO, elem: DataElement, encodings, implicit: bool) -> None:
    """A parsed sequence: its items written here, their lengths patched in as pydicom does."""
    encodings = convert_encodings(encodings or [default_encoding])
    undefined = elem.is_undefined_length
    out.write(_TAG.pack(elem.tag >> 16, elem.tag & 0xFFFF))
    if not implicit:
        out.write(b"SQ\x00\x00")
    out.write(_UL.pack(_UNDEFINED))
    start = out.tell()
    if not elem.is_empty:
        for item in elem.value:
            _item(out, item, encodings, implicit)
    if undefined:
        out.write(_SEQUENCE_DELIMITER)
    else:
        _patch_length(out, start)


def _item(out: DicomBytesIO, item: Dataset, encodings, implicit: bool) -> None:
    out.write(_ITEM + b"\xff\xff\xff\xff")
    start = out.tell()
    _dataset(out, item, encodings, implicit)
    if getattr(item, "is_undefined_length_sequence_item", False):
        out.write(_ITEM_DELIMITER)
    else:
        _patch_length(out, start)


def _patch_length(out: DicomBytesIO, start: int) -> None:
    """Write the length of what follows ``start`` into the 4 bytes before it."""
    end = out.tell()
    out.seek(start - 4)
    out.write(_UL.pack(end - start))
    out.seek(end)
