"""Reading a stored or spooled Part 10 file's data set without reading its pixel data.

Everything but the pixel data element is parsed, including the elements that sort
after it (Digital Signatures, Data Set Trailing Padding, private groups above 7FE0):
de-identification must see every element. The end of the pixel data is found from its
length or, when encapsulated, by stepping over the item headers; no value is read.
"""
from __future__ import annotations

import dataclasses
import io
import struct
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian, UID

from archive.errors import DatasetDoesNotMatchSOPClass, InvalidDataset
from archive.frames import ItemSpans, _element_header, item_spans
from archive.rawitems import LONG_VRS
from archive.valuecheck import check_values

PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, Float, DoubleFloat
TRUNCATED = "truncated: the file ends inside a data element (a transfer or copy cut short?)"
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_DELIM, _SEQ_DELIM = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = LONG_VRS
#: Values after the pixel data longer than this stay unread until used (a large Data Set
#: Trailing Padding that the profile removes is never read at all).
TRAILER_DEFER = 64 * 1024
#: Files up to this size are parsed from their bytes in memory: pydicom asks the file for its
#: position at every element, one lseek each on a file (~0.15 ms of a small instance's ~0.7).
PARSE_IN_MEMORY = 256 * 1024


@dataclasses.dataclass
class Header:
    """A data set without its pixel data, and where that pixel data lies in the file.

    ``dataset`` holds the elements before the pixel data, ``trailer`` those after it
    (empty for most files) with values over TRAILER_DEFER left unread. ``pixel_offset`` is the file offset of the pixel data
    element's tag and ``pixel_end`` the offset just past its value (past the sequence
    delimiter when encapsulated); both None when the instance has no pixel data
    (annotations) or when offsets are meaningless (deflated transfer syntax).
    """

    dataset: Dataset
    transfer_syntax: UID
    pixel_offset: int | None
    file_size: int
    pixel_end: int | None = None
    trailer: Dataset = dataclasses.field(default_factory=Dataset)
    #: Encapsulated pixel data: frames.item_spans of its items (offsets relative to its value).
    item_spans: ItemSpans | None = None

    def complete(self) -> Dataset:
        """``dataset`` with the trailer's elements added: every element but the pixel data.

        Values the trailer left unread stay unread (they are read from the file on use).
        """
        for tag in self.trailer.keys():
            # Straight into the element table: Dataset.__setitem__ would convert a private
            # element, which reads (and for a deferred value, loses) its value.
            self.dataset._dict[tag] = self.trailer.get_item(tag, keep_deferred=True)
        return self.dataset


def read_header(path: Path) -> Header:
    """Parse everything but the pixel data; raises InvalidDataset for non-DICOM or truncated bytes."""
    size = Path(path).stat().st_size
    ds = pixel_offset = None
    try:
        with open(path, "rb") as f:
            ds, position = _read_until_pixels(f, size)
            ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
            if ts is None:
                raise InvalidDataset("no Transfer Syntax UID in the file meta information")
            ts = UID(ts)
            pixel_offset = None
            if ts != DeflatedExplicitVRLittleEndian and position < size:
                f.seek(position)
                tag = f.read(4)
                if len(tag) == 4:
                    group = int.from_bytes(tag[:2], "little")
                    elem = int.from_bytes(tag[2:], "little")
                    if (group << 16 | elem) in PIXEL_DATA_TAGS:
                        pixel_offset = position
            pixel_end = spans = None
            trailer = Dataset()
            if pixel_offset is not None:
                f.seek(pixel_offset)
                pixel_end, spans = _pixel_data_end(f, ts, size)
                if pixel_end < size:
                    trailer = _read_trailer(f, pixel_end, size, ts == ImplicitVRLittleEndian)
            elif ts == DeflatedExplicitVRLittleEndian:
                trailer = _deflated_trailer(path)
            if pixel_offset is None and ts not in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
                # pydicom stops quietly at the end of the file: a header cut short would
                # otherwise look like a data set with attributes missing.
                start = _dataset_start(ds)
                if start is not None and start <= size:
                    f.seek(start)
                    _check_complete(f, size, ts != ImplicitVRLittleEndian)
            check_values(ds)
    except (InvalidDataset, DatasetDoesNotMatchSOPClass) as e:
        if pixel_offset is not None:  # the header before the pixel data is whole: it names the instance
            e.dataset = ds  # type: ignore[attr-defined]
        raise
    except InvalidDicomError:
        raise InvalidDataset("not a DICOM Part 10 file (no DICM prefix or file meta information)") from None
    except EOFError:
        raise InvalidDataset(TRUNCATED) from None
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for malformed bytes; all mean the same
        raise InvalidDataset(f"cannot parse the data set: {type(e).__name__}") from None
    return Header(ds, ts, pixel_offset, size, pixel_end, trailer, spans)


def _read_until_pixels(f: BinaryIO, size: int) -> tuple[Dataset, int]:
    """pydicom's parse of everything before the pixel data (none of it deferred), and the
    offset where it stopped; a small file from its bytes in memory, the same parse."""
    if size > PARSE_IN_MEMORY:
        return dcmread(f, stop_before_pixels=True), f.tell()
    source = io.BytesIO(f.read())
    ds = dcmread(source, stop_before_pixels=True)
    ds.buffer = None  # nothing is left to read from it: the received bytes are not kept with the data set
    return ds, source.tell()


def _pixel_data_end(f: BinaryIO, ts: UID, size: int) -> tuple[int, ItemSpans | None]:
    """(Offset just past the pixel data element whose tag is at the current position, its item spans)."""
    value_start, length = _element_header(f, ts)
    if length != _UNDEFINED:
        if value_start + length > size:
            raise InvalidDataset("pixel data truncated: the file ends before the end of its value")
        return value_start + length, None
    spans, end = item_spans(f.fileno(), value_start, size)  # item headers only, no fragment is read
    return end, spans


def _read_trailer(f: BinaryIO, start: int, size: int, implicit: bool) -> Dataset:
    """The elements after the pixel data, large values left unread until used."""
    f.seek(start)
    _check_complete(f, size, not implicit)
    f.seek(start)
    try:
        trailer = read_dataset(f, implicit, True, defer_size=TRAILER_DEFER)
    except EOFError:
        raise InvalidDataset(TRUNCATED) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError, struct.error):
        trailer = None
    if trailer is None or f.tell() != size:
        raise InvalidDataset("unreadable bytes after the pixel data (not a sequence of data elements)")
    return trailer


def _deflated_trailer(path: Path) -> Dataset:
    """The elements after the pixel data of a deflated file (small: it is inflated whole)."""
    full = read_full(path)
    trailer = Dataset()
    pixel = min((tag for tag in PIXEL_DATA_TAGS if tag in full), default=None)
    if pixel is not None:
        for tag in full.keys():
            if tag > pixel:
                trailer._dict[tag] = full.get_item(tag)
    return trailer


def _dataset_start(ds: Dataset) -> int | None:
    """File offset of the data set: preamble, DICM and the file meta group (by its group length)."""
    length = ds.file_meta.get("FileMetaInformationGroupLength")
    return None if length is None else 128 + 4 + 12 + int(length)


class _Truncated(Exception):
    pass


def _check_complete(f: BinaryIO, size: int, explicit: bool) -> None:
    """Raise InvalidDataset when an element's value, or a sequence's delimiter, lies beyond the end.

    Walks element headers only (values are skipped with a seek). Structures it does not
    recognise end the check: it exists to name truncation, not to judge conformance.
    """
    try:
        _walk(f, size, explicit, None)
    except _Truncated:
        raise InvalidDataset(TRUNCATED) from None
    except _Unrecognised:
        return


class _Unrecognised(Exception):
    pass


def _walk(f: BinaryIO, size: int, explicit: bool, until: int | None) -> None:
    """Skip elements (or items) until ``until`` (a delimiter tag) or, at the top level, the end."""
    while True:
        if f.tell() == size:
            if until is not None:
                raise _Truncated
            return
        head = f.read(8)
        if len(head) < 8:
            raise _Truncated
        group, elem = struct.unpack("<HH", head[:4])
        tag = group << 16 | elem
        if group == 0xFFFE:
            length = struct.unpack("<I", head[4:])[0]
            if tag == until:
                return
            if tag != _ITEM:
                raise _Unrecognised
            if length == _UNDEFINED:
                _walk(f, size, explicit, _ITEM_DELIM)
                continue
        elif explicit:
            vr = head[4:6]
            if vr in _LONG_VRS:
                extra = f.read(4)
                if len(extra) < 4:
                    raise _Truncated
                length = struct.unpack("<I", extra)[0]
            elif vr.isalpha() and vr.isupper():
                length = struct.unpack("<H", head[6:])[0]
            else:
                raise _Unrecognised
            if length == _UNDEFINED:
                _walk(f, size, explicit and vr != b"UN", _SEQ_DELIM)
                continue
        else:
            length = struct.unpack("<I", head[4:])[0]
            if length == _UNDEFINED:
                _walk(f, size, False, _SEQ_DELIM)
                continue
        if f.tell() + length > size:
            raise _Truncated
        f.seek(length, 1)


def read_full(path: Path) -> Dataset:
    """The whole data set (small instances only: overviews, deflated files)."""
    try:
        return dcmread(path)
    except Exception as e:  # noqa: BLE001 - any parse failure is the same answer
        raise InvalidDataset(f"cannot parse the data set: {type(e).__name__}") from None


def looks_like_dicom(path: Path) -> bool:
    """A Part 10 file: 128-byte preamble then ``DICM``, and not a DICOMDIR (a media index, not an instance)."""
    if path.name.upper() == "DICOMDIR":
        return False
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False
