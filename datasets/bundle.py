"""Deterministic tar and zip archives of a list of members, served by byte range without building them.

Every byte of the archive follows from the member list alone (names, sizes, one
fixed mtime, fixed owner and mode, a fixed order), so the offset of every member
is computed up front and any range ``[start, end)`` is produced by reading only
the members it covers. That is what lets a download of any size resume with an
HTTP Range request and get the very bytes it would have got the first time.

Tar is POSIX pax (ustar headers, a pax extended header only for names longer
than ustar holds or members of 8 GiB and more), as ``tarfile`` writes it. Zip is
stored (no compression: the pixel data is compressed already), zip64 always,
with a data descriptor after each member: a CRC-32 is known only once a member
has been read, so the central directory takes the CRC-32s from ``crc32`` (a
callable that reads and remembers them).
"""
from __future__ import annotations

import bisect
import dataclasses
import struct
import tarfile
import time
import zlib
from typing import Callable, Iterator

CHUNK = 1 << 20
BLOCK = 512
Reader = Callable[[int, int], bytes]  # (offset, length) -> exactly those bytes of the member


@dataclasses.dataclass(frozen=True)
class Member:
    """One file of the archive: its path inside it, its size, and how to read a piece of it."""

    name: str
    size: int
    read: Reader
    key: str = ""  # what identifies the content (a SHA-256) for the CRC-32 cache


def from_bytes(name: str, data: bytes) -> Member:
    return Member(name, len(data), lambda offset, length: data[offset:offset + length])


class Layout:
    """An archive as a sequence of pieces: ``piece(i)`` answers its bytes, ``offsets`` where each starts."""

    media_type = "application/octet-stream"
    tracks_crc = False  # whether streaming a whole member computes its CRC-32 (for ``seen``)

    def __init__(self, members: list[Member], mtime: float):
        self.members = members
        self.mtime = int(mtime)
        # (offset, length, kind, member index): kind is "head", "data", "tail" (per member) or "end"
        self.pieces: list[tuple[int, int, str, int]] = []
        self.size = 0
        self._build()
        self.offsets = [p[0] for p in self.pieces]

    def _add(self, length: int, kind: str, index: int) -> None:
        if length:
            self.pieces.append((self.size, length, kind, index))
            self.size += length

    def _build(self) -> None:
        raise NotImplementedError

    def _bytes(self, kind: str, index: int) -> bytes:
        raise NotImplementedError

    def seen(self, index: int, crc: int) -> None:
        """Member ``index`` was streamed whole and has this CRC-32."""

    def member_offset(self, index: int) -> int:
        """Where member ``index``'s data starts in the archive."""
        return next(p[0] for p in self.pieces if p[2] == "data" and p[3] == index)

    def stream(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes ``[start, end)`` of the archive, in chunks of at most ``CHUNK``."""
        end = self.size if end is None else min(end, self.size)
        i = max(bisect.bisect_right(self.offsets, start) - 1, 0)
        while start < end and i < len(self.pieces):
            offset, length, kind, index = self.pieces[i]
            lo, hi = start - offset, min(end - offset, length)
            if kind == "data":
                read = self.members[index].read
                whole = lo == 0 and hi == length
                crc = 0
                for pos in range(lo, hi, CHUNK):
                    n = min(CHUNK, hi - pos)
                    data = read(pos, n)
                    if len(data) != n:
                        raise OSError(f"member {index} is shorter than its recorded size")
                    if whole and self.tracks_crc:
                        crc = zlib.crc32(data, crc)
                    yield data
                if whole and self.tracks_crc:
                    self.seen(index, crc)
            else:
                yield self._bytes(kind, index)[lo:hi]
            start = offset + hi
            i += 1


class TarLayout(Layout):
    media_type = "application/x-tar"

    def _header(self, index: int) -> bytes:
        member = self.members[index]
        info = tarfile.TarInfo(member.name)
        info.size, info.mtime, info.mode, info.type = member.size, self.mtime, 0o644, tarfile.REGTYPE
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")

    def _build(self) -> None:
        for i, member in enumerate(self.members):
            self._add(len(self._header(i)), "head", i)
            self._add(member.size, "data", i)
            self._add(-member.size % BLOCK, "tail", i)
        self._add(2 * BLOCK, "end", -1)  # two zero blocks end a tar archive

    def _bytes(self, kind: str, index: int) -> bytes:
        if kind == "head":
            return self._header(index)
        if kind == "tail":
            return bytes(-self.members[index].size % BLOCK)
        return bytes(2 * BLOCK)


def _dos_time(mtime: int) -> tuple[int, int]:
    t = time.gmtime(max(mtime, 315532800))  # zip times start in 1980
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday


ZIP_VERSION = 45  # 4.5: zip64
ZIP_FLAGS = 0x0008 | 0x0800  # sizes and CRC-32 in a data descriptor; UTF-8 names
ZIP64 = 0xFFFFFFFF


class ZipLayout(Layout):
    """Stored zip64 with data descriptors; ``crc32(index)`` gives a member's CRC-32 (reading it if need be),
    ``crc32.remember(index, crc)`` (when it has one) keeps what streaming computed."""

    media_type = "application/zip"
    tracks_crc = True

    def __init__(self, members: list[Member], mtime: float, crc32: Callable[[int], int]):
        self.crc32 = crc32
        self._dos = _dos_time(int(mtime))
        super().__init__(members, mtime)

    def seen(self, index: int, crc: int) -> None:
        remember = getattr(self.crc32, "remember", None)
        if remember is not None:
            remember(index, crc)

    def _local(self, index: int) -> bytes:
        name = self.members[index].name.encode()
        extra = struct.pack("<HHQQ", 1, 16, 0, 0)  # zip64 sizes, given in the data descriptor
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, ZIP_VERSION, ZIP_FLAGS, 0, *self._dos, 0, ZIP64, ZIP64,
                           len(name), len(extra)) + name + extra

    def _descriptor(self, index: int) -> bytes:
        size = self.members[index].size
        return struct.pack("<IIQQ", 0x08074B50, self.crc32(index), size, size)

    def _central_entry(self, index: int) -> bytes:
        member = self.members[index]
        name = member.name.encode()
        extra = struct.pack("<HHQQQ", 1, 24, member.size, member.size, self._local_offsets[index])
        return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | ZIP_VERSION, ZIP_VERSION, ZIP_FLAGS, 0,
                           *self._dos, self.crc32(index), ZIP64, ZIP64, len(name), len(extra), 0, 0, 0,
                           0o100644 << 16, ZIP64) + name + extra

    def _central_size(self, index: int) -> int:
        return 46 + len(self.members[index].name.encode()) + 28

    def _build(self) -> None:
        self._local_offsets: list[int] = []
        for i, member in enumerate(self.members):
            self._local_offsets.append(self.size)
            self._add(30 + len(member.name.encode()) + 20, "head", i)
            self._add(member.size, "data", i)
            self._add(24, "tail", i)
        self._directory_offset = self.size
        for i in range(len(self.members)):
            self._add(self._central_size(i), "central", i)
        self._directory_size = self.size - self._directory_offset
        self._add(56 + 20 + 22, "end", -1)

    def _end(self) -> bytes:
        n, size, offset = len(self.members), self._directory_size, self._directory_offset
        record = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, (3 << 8) | ZIP_VERSION, ZIP_VERSION, 0, 0, n, n, size,
                             offset)
        locator = struct.pack("<IIQI", 0x07064B50, 0, offset + size, 1)
        end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(n, 0xFFFF), min(n, 0xFFFF), min(size, ZIP64),
                          ZIP64, 0)
        return record + locator + end

    def _bytes(self, kind: str, index: int) -> bytes:
        if kind == "head":
            return self._local(index)
        if kind == "tail":
            return self._descriptor(index)
        if kind == "central":
            return self._central_entry(index)
        return self._end()
