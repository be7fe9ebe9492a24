"""The storage area: opaque ids to bytes on disk, written atomically.

Paths are built from server-generated ids (``ab/cd/<id>``), never from a UID a
peer sent. A file is visible under its final name only after fsync + rename, so
a crash mid-write leaves at most a temp file, which ``sweep_temp`` removes.

An id is random but for its first four hex digits (its directory), which a process keeps
for ``FILES_PER_DIRECTORY`` files before it draws new ones: with a fresh directory drawn
per file, nearly every instance of an archive's first ~100,000 made one (a mkdir and a
flush of its parent, ~0.5 ms of CPU per small instance); this way one per 256 files, and
the files still spread over all 65,536 directories as the archive grows.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from archive.errors import OutOfResources

CHUNK = 1 << 20
#: Files a process commits into one ``ab/cd`` directory before it draws another (module docstring).
FILES_PER_DIRECTORY = 256


class _FdCache:
    """Open file descriptors by storage id: a frame is one pread, no open() per request.

    The path is built (``path_of``) only on a miss: three pathlib joins cost more than the
    pread of a frame."""

    def __init__(self, size: int = 256):
        self.size = size
        self.items: OrderedDict[str, int] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, storage_id: str, path_of: Callable[[str], Path]) -> int:
        with self.lock:
            fd = self.items.get(storage_id)
            if fd is not None:
                self.items.move_to_end(storage_id)
                return fd
        fd = os.open(path_of(storage_id), os.O_RDONLY)
        with self.lock:
            if storage_id in self.items:
                os.close(fd)
                return self.items[storage_id]
            self.items[storage_id] = fd
            while len(self.items) > self.size:
                _, old = self.items.popitem(last=False)
                os.close(old)
        return fd


class StorageArea:
    """Files under ``root`` (``<data_dir>/storage``), the default backend."""

    kind = "local"
    #: Bytes of following frames worth reading ahead on a frame miss: none, a pread is cheap.
    readahead = 0
    #: A deleted instance's file is removed at once (None): one already open stays readable after unlink.
    removal_delay = None

    def __init__(self, root: Path):
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._fds = _FdCache()
        self._lock = threading.Lock()
        self._prefix = ""  # the four hex digits of the directory new ids go to ("": draw one)
        self._left = 0  # files still to go there

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
        not name is a leftover that ``verify`` reports and ``sweep_temp`` removes. The first
        file of a new directory also flushes that directory's creation into its parent.
        """
        storage_id = self._new_id()
        final = self.path(storage_id)
        try:
            with open(temp, "rb") as f:
                os.fdatasync(f.fileno())
            if not final.parent.is_dir():
                _make_durable_dirs(final.parent)
            os.rename(temp, final)
            _fsync_dir(final.parent)
        except OSError as e:
            raise_for_os_error(e)
        return storage_id

    def _new_id(self) -> str:
        """A new storage id: 32 hex digits, the first four those of the current directory."""
        random = uuid.uuid4().hex
        with self._lock:
            if self._left <= 0:
                self._prefix, self._left = random[:4], FILES_PER_DIRECTORY
            self._left -= 1
            return self._prefix + random[4:]

    def remove(self, storage_id: str) -> None:
        try:
            self.path(storage_id).unlink()
        except FileNotFoundError:
            pass

    def read_range(self, storage_id: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of a stored file: one pread on a cached descriptor."""
        return os.pread(self._fds.get(storage_id, self.path), length, offset)

    def read_ranges(self, storage_id: str, ranges: list[tuple[int, int]],
                    prefetch: list[tuple[int, int]] = ()) -> list[bytes]:
        """Each (offset, length) of a stored file, one pread each; ``prefetch`` is for object storage."""
        fd = self._fds.get(storage_id, self.path)
        return [os.pread(fd, length, offset) for offset, length in ranges]

    def open(self, storage_id: str) -> BinaryIO:
        return open(self.path(storage_id), "rb")

    def size(self, storage_id: str) -> int | None:
        try:
            return self.path(storage_id).stat().st_size
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def local_copy(self, storage_id: str) -> Iterator[Path]:
        """The stored file itself (senders that need a path); the S3 backend downloads a copy."""
        yield self.path(storage_id)

    def local_path(self, storage_id: str) -> Path:
        return self.path(storage_id)

    def objects(self) -> dict[str, int]:
        """Every committed file on disk: storage id -> size (for ``verify``), wherever it lies."""
        return {f.name: f.stat().st_size for f in self.root.glob("*/*/*")
                if f.is_file() and f.parent.parent.name != "tmp"}

    def remove_orphans(self, storage_ids: set[str]) -> None:
        """Remove files ``verify`` found without catalog rows, wherever they lie (not only at ``path``)."""
        for f in self.root.glob("*/*/*"):
            if f.name in storage_ids and f.parent.parent.name != "tmp":
                f.unlink(missing_ok=True)

    def check(self) -> None:
        """Nothing to reach: the directory is checked by /health/ready's free-space test."""

    def modified(self, storage_ids: set[str]) -> dict[str, float]:
        """When each of these files was written (seconds since the epoch), wherever it lies; a file
        removed meanwhile is left out."""
        found: dict[str, float] = {}
        for f in self.root.glob("*/*/*"):
            if f.name in storage_ids and f.parent.parent.name != "tmp":
                with contextlib.suppress(FileNotFoundError):
                    found[f.name] = f.stat().st_mtime
        return found

    def sweep_temp(self, older_than: float = 0.0) -> int:
        """Remove temp files left by a crash (those not written for ``older_than`` seconds); how many."""
        return sweep(self.tmp, older_than)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_durable_dirs(directory: Path) -> None:
    """Create the missing levels of ``directory``, each flushed into its parent: a new directory
    is an entry of its parent, and after a power cut it (with every file under it) is gone
    unless the parent was flushed. Once per new directory, so rarely."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by another thread at once: flush all the same
            d.mkdir()
        _fsync_dir(d.parent)


def leftovers(tmp: Path, older_than: float = 0.0) -> list[Path]:
    """The files in ``tmp`` not written for ``older_than`` seconds (younger ones may be in use)."""
    now, found = time.time(), []
    for f in tmp.iterdir():
        with contextlib.suppress(FileNotFoundError):  # committed or swept meanwhile
            if now - f.stat().st_mtime >= older_than:
                found.append(f)
    return found


def sweep(tmp: Path, older_than: float = 0.0) -> int:
    """Remove ``leftovers(tmp, older_than)``; returns how many."""
    found = leftovers(tmp, older_than)
    for f in found:
        f.unlink(missing_ok=True)
    return len(found)


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

