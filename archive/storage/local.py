"""The storage area: opaque ids to bytes on disk, written atomically.

Paths are built from server-generated ids (``ab/cd/<id>``), never from a UID a
peer sent. A file is visible under its final name only after fsync + rename, so
a crash mid-write leaves at most a temp file, which ``sweep_temp`` removes.
"""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

from archive.errors import OutOfResources

CHUNK = 1 << 20


class StorageArea:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, storage_id: str) -> Path:
        return self.root / storage_id[:2] / storage_id[2:4] / storage_id

    def new_temp(self) -> Path:
        """A fresh temp path inside the area (same filesystem, so rename is atomic)."""
        return self.tmp / f"{uuid.uuid4().hex}.part"

    def commit(self, temp: Path) -> str:
        """Make ``temp`` durable and move it under a new id; returns the id.

        Two flushes, in this order, and no more: the file's data (``fdatasync``: its
        bytes and the size and block map needed to read them back, not its timestamps,
        which nothing reads; about half the cost of ``fsync`` here), then, after the
        rename, the directory that now names it. Only then may the catalog record the
        instance (its own commit is the third flush, in SQLite): after a power cut an
        instance in the catalog always has its whole file, and a file the catalog does
        not name is a leftover that ``verify`` reports and ``sweep_temp`` removes.
        """
        storage_id = uuid.uuid4().hex
        final = self.path(storage_id)
        try:
            with open(temp, "rb") as f:
                os.fdatasync(f.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(temp, final)
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise_for_os_error(e)
        return storage_id

    def remove(self, storage_id: str) -> None:
        try:
            self.path(storage_id).unlink()
        except FileNotFoundError:
            pass

    def files(self) -> dict[str, Path]:
        """Every committed file on disk by its name (for ``verify``), wherever it lies."""
        return {f.name: f for f in self.root.glob("*/*/*") if f.is_file() and f.parent.parent.name != "tmp"}

    def sweep_temp(self) -> int:
        """Remove temp files left by a crash; returns how many."""
        n = 0
        for f in self.tmp.iterdir():
            f.unlink(missing_ok=True)
            n += 1
        return n


def spool(stream: BinaryIO, dest: Path, limit: int | None = None) -> int:
    """Copy ``stream`` to ``dest`` in chunks (bounded memory); returns the byte count."""
    n = 0
    try:
        with open(dest, "wb") as out:
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                n += len(chunk)
    except OSError as e:
        dest.unlink(missing_ok=True)
        raise_for_os_error(e)
    return n


def copy_range(src: BinaryIO, dst: BinaryIO, length: int | None = None) -> None:
    """Copy ``length`` bytes (or to EOF) from ``src`` to ``dst`` in chunks."""
    if length is None:
        shutil.copyfileobj(src, dst, CHUNK)
        return
    while length > 0:
        chunk = src.read(min(CHUNK, length))
        if not chunk:
            break
        dst.write(chunk)
        length -= len(chunk)


def raise_for_os_error(e: OSError) -> None:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        raise OutOfResources(f"storage: {os.strerror(e.errno)}") from e
    raise e
