"""The frame index: where each frame's bytes are inside a stored file, found once at ingest.

Tried in order, each validated against the fragments actually present: the
Extended Offset Table, the Basic Offset Table, then a scan of the fragments.
Native pixel data is indexed by arithmetic. The index is two uint64 arrays
(offsets, lengths) plus a layout:

- ``native``: frame i is the byte range (offset, length) of the pixel data value.
- ``fragment``: each frame is one fragment; (offset, length) is its value.
- ``fragments``: a frame spans several fragments; (offset, length) covers their
  item headers too, which ``strip_items`` removes when serving.
- ``bits``: 1-bit native data not byte aligned; offset is the value start and
  length the number of bits per frame.
"""
from __future__ import annotations

import dataclasses
import os
import re
from array import array
import struct
from typing import BinaryIO

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ImplicitVRLittleEndian

from archive.errors import InvalidDataset

ITEM = 0xE000FFFE  # (FFFE,E000) read as one little-endian uint32
SEQ_DELIM = 0xE0DDFFFE
_ITEM_HEADER = struct.Struct("<II")  # (tag as one uint32, length)
_JPEG_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")
_ROWS, _COLUMNS, _SAMPLES_PER_PIXEL, BITS_ALLOCATED, _NUMBER_OF_FRAMES = (
    0x00280010, 0x00280011, 0x00280002, 0x00280100, 0x00280008)
_ONE_INTEGER = re.compile(rb" *[+-]?[0-9]+ *")  # an IS value pydicom converts to that int


@dataclasses.dataclass(frozen=True)
class ItemSpans:
    """The items of an encapsulated pixel data value: offsets relative to the value, lengths."""

    offsets: array
    lengths: array


@dataclasses.dataclass
class FrameIndex:
    layout: str
    offsets: np.ndarray
    lengths: np.ndarray

    def pack(self) -> bytes:
        return np.stack([self.offsets, self.lengths]).astype("<u8").tobytes()

    @classmethod
    def unpack(cls, layout: str, blob: bytes) -> "FrameIndex":
        a = np.frombuffer(blob, dtype="<u8").reshape(2, -1)
        return cls(layout, a[0], a[1])

    def __len__(self) -> int:
        return len(self.offsets)


def _element_header(f: BinaryIO, ts: UID) -> tuple[int, int]:
    """Read the pixel data element header at the current position: (value start, length)."""
    raw = f.read(8)
    if len(raw) < 8:
        raise InvalidDataset("pixel data element truncated")
    if ts == ImplicitVRLittleEndian:
        length = struct.unpack("<I", raw[4:8])[0]
        return f.tell(), length
    if ts == ExplicitVRBigEndian:
        raise InvalidDataset("Explicit VR Big Endian (retired) pixel data is not indexed")
    vr = raw[4:6]
    if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"UT", b"SQ"):
        extra = f.read(4)
        if len(extra) < 4:
            raise InvalidDataset("pixel data element truncated")
        return f.tell(), struct.unpack("<I", extra)[0]
    return f.tell(), struct.unpack("<H", raw[6:8])[0]


def item_spans(fd: int, start: int, file_size: int) -> tuple[ItemSpans, int]:
    """The items of encapsulated pixel data whose value starts at ``start``.

    Returns (each item's value offset relative to ``start`` and length, file offset just
    past the sequence delimiter). Relative offsets stay true in a copy of the element
    placed elsewhere (the stored file, behind a rewritten header), so one walk serves
    both. Only the 8-byte item headers are read, one ``pread`` each (a buffered read would
    pull in 8 KB of fragment per item); no fragment value is touched.
    """
    offsets, lengths = array("q"), array("q")  # 16 bytes an item: a 49,152-frame level holds 0.8 MB
    position = start
    pread, unpack, add_offset, add_length = os.pread, _ITEM_HEADER.unpack, offsets.append, lengths.append
    while True:
        head = pread(fd, 8, position)
        if len(head) < 8:
            raise InvalidDataset("encapsulated pixel data truncated (no sequence delimiter)")
        tag, length = unpack(head)
        position += 8
        if tag == SEQ_DELIM:
            return ItemSpans(offsets, lengths), position
        if tag != ITEM or length == 0xFFFFFFFF or position + length > file_size:
            raise InvalidDataset("encapsulated pixel data malformed or truncated")
        add_offset(position - start)
        add_length(length)
        position += length


def _frames_from_starts(fragments: list[tuple[int, int]], starts: list[int]) -> FrameIndex:
    """Group fragments into frames given the index of each frame's first fragment."""
    if starts == list(range(len(fragments))):
        offsets = np.array([o for o, _ in fragments], dtype=np.uint64)
        lengths = np.array([n for _, n in fragments], dtype=np.uint64)
        return FrameIndex("fragment", offsets, lengths)
    bounds = starts + [len(fragments)]
    offsets, lengths = [], []
    for a, b in zip(bounds, bounds[1:]):
        begin = fragments[a][0] - 8
        end = fragments[b - 1][0] + fragments[b - 1][1]
        offsets.append(begin)
        lengths.append(end - begin)
    return FrameIndex("fragments", np.array(offsets, dtype=np.uint64), np.array(lengths, dtype=np.uint64))


def _starts_from_table(table: np.ndarray, fragments: list[tuple[int, int]], first_item: int) -> list[int] | None:
    """Map offset-table entries (relative to the first fragment's item tag) to fragment indices."""
    if len(table) == 0 or table[0] != 0 or np.any(np.diff(table.astype(np.int64)) <= 0):
        return None
    positions = {offset - 8 - first_item: i for i, (offset, _) in enumerate(fragments)}
    starts = [positions.get(int(t)) for t in table]
    return None if any(s is None for s in starts) else starts  # type: ignore[return-value]


def index_frames(f: BinaryIO, header_ds: Dataset, ts: UID, pixel_offset: int, file_size: int,
                 spans: ItemSpans | None = None) -> FrameIndex:
    """Build the frame index of the pixel data element whose tag is at ``pixel_offset``.

    ``spans``: the element's ``item_spans`` when already walked (in the received file
    the stored one copies the element from); else the items are walked here.
    """
    number_of_frames = int(number(header_ds, _NUMBER_OF_FRAMES, 1) or 1)
    f.seek(pixel_offset)
    value_start, length = _element_header(f, ts)
    if length != 0xFFFFFFFF:
        return _native(header_ds, value_start, length, number_of_frames, file_size)
    if spans is None:
        spans = item_spans(f.fileno(), value_start, file_size)[0]
    if len(spans.offsets) < 2:
        raise InvalidDataset("encapsulated pixel data has no fragments")
    bot = os.pread(f.fileno(), spans.lengths[0], value_start + spans.offsets[0])
    fragments = list(zip(spans.offsets[1:], spans.lengths[1:]))
    index = _encapsulated(f, header_ds, number_of_frames, bot, fragments, value_start)
    index.offsets += np.uint64(value_start)  # the fragments' offsets are relative to the value
    return index


def _encapsulated(f: BinaryIO, header_ds: Dataset, number_of_frames: int, bot: bytes,
                  fragments: list[tuple[int, int]], value_start: int) -> FrameIndex:
    """The frame index from the fragments (offsets relative to ``value_start``) and the offset tables."""
    first_item = fragments[0][0] - 8
    eot = header_ds.get("ExtendedOffsetTable")
    candidates = []
    if eot is not None and len(eot) > 0:
        candidates.append(np.frombuffer(eot, dtype="<u8"))
    if len(bot) >= 4:
        candidates.append(np.frombuffer(bot[: len(bot) // 4 * 4], dtype="<u4").astype(np.uint64))
    for table in candidates:
        if len(table) != number_of_frames:
            continue  # a table that lies about the frame count is ignored
        starts = _starts_from_table(table, fragments, first_item)
        if starts is not None:
            return _frames_from_starts(fragments, starts)
    if len(fragments) == number_of_frames:
        return _frames_from_starts(fragments, list(range(number_of_frames)))
    if number_of_frames == 1:
        return _frames_from_starts(fragments, [0])
    starts = _starts_by_marker(f, fragments, value_start)
    if len(starts) == number_of_frames and starts[0] == 0:
        return _frames_from_starts(fragments, starts)
    raise InvalidDataset(
        f"cannot find {number_of_frames} frames in {len(fragments)} fragments (no usable offset table)")


def _starts_by_marker(f: BinaryIO, fragments: list[tuple[int, int]], value_start: int) -> list[int]:
    """Fragments that begin a codestream (JPEG SOI, J2K SOC, JP2 signature) begin a frame."""
    starts = []
    for i, (offset, _) in enumerate(fragments):
        f.seek(value_start + offset)
        if f.read(12).startswith(_JPEG_STARTS):
            starts.append(i)
    return starts


def number(ds: Dataset, tag: int, default: int | None = None) -> object:
    """``ds.get(keyword, default)`` for a US or IS element, read from its bytes when they are plain
    (one little endian US, one integer string) and else converted by pydicom: converting the
    five elements a frame index reads was most of its cost for a small instance (ingest reads
    Bits Allocated with it too). The element stays as it was: a raw one is not converted here."""
    elem = ds._dict.get(tag)
    if elem is None:
        return default
    if isinstance(elem, RawDataElement) and elem.is_little_endian and elem.value is not None:
        if elem.VR == "US" and len(elem.value) == 2:
            return int.from_bytes(elem.value, "little")
        if elem.VR == "IS" and _ONE_INTEGER.fullmatch(elem.value):
            return int(elem.value)
    return ds[tag].value


def _native(ds: Dataset, value_start: int, length: int, frames: int, file_size: int) -> FrameIndex:
    try:
        bits = (int(number(ds, _ROWS)) * int(number(ds, _COLUMNS)) * int(number(ds, _SAMPLES_PER_PIXEL, 1))
                * int(number(ds, BITS_ALLOCATED)))
    except (AttributeError, TypeError, ValueError):
        raise InvalidDataset("native pixel data without Rows, Columns or BitsAllocated") from None
    if value_start + length > file_size:
        raise InvalidDataset("pixel data truncated: the file ends before the end of its value")
    if bits * frames > length * 8:
        raise InvalidDataset("pixel data shorter than Rows x Columns x NumberOfFrames")
    if bits % 8:
        offsets = np.full(frames, value_start, dtype=np.uint64)
        return FrameIndex("bits", offsets, np.full(frames, bits, dtype=np.uint64))
    size = bits // 8
    offsets = value_start + np.arange(frames, dtype=np.uint64) * np.uint64(size)
    return FrameIndex("native", offsets, np.full(frames, size, dtype=np.uint64))


def strip_items(data: bytes) -> bytes:
    """Concatenate the fragment values of a multi-fragment frame span."""
    out, i = [], 0
    while i + 8 <= len(data):
        _, n = struct.unpack_from("<II", data, i)
        out.append(data[i + 8 : i + 8 + n])
        i += 8 + n
    return b"".join(out)


def unpack_bits(data: bytes, start_bit: int, nbits: int) -> bytes:
    """``nbits`` bits of bit-packed ``data`` from ``start_bit``, re-packed to start at bit 0."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[start_bit : start_bit + nbits]
    return np.packbits(bits, bitorder="little").tobytes()
