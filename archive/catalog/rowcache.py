"""The frame path's instance rows, kept in memory while the SQLite catalog is unchanged.

Every single-frame request asked SQLite for its instance row. Each such call releases the
GIL inside ``sqlite3_step``, and an HTTP worker's threads handing it to one another there
tripled the CPU of a request: ``bench/frame_path.py --threads 4`` measured 121-131 us of
process CPU per request, 54-62 us with this cache (bench/FINDINGS.md, "2026-12-07").

A kept row is used only while no transaction has been committed since it was read, by any
connection of any process. That is read from SQLite's own WAL-index header: the first 48
bytes of the ``-shm`` file, written twice (two copies of 48 bytes), rewritten at every
commit and checkpoint (https://sqlite.org/walformat.html, "The WAL-Index Header"). It is
mapped read-only and compared as memory, without a system call, which would release the
GIL again. A deletion, a change of a study's collections, an ingest: any commit turns every
kept row into a miss, which is the query as before. A PostgreSQL catalog (several nodes)
has no such header: ``for_catalog`` returns None and every request asks the database.

A dedicated connection stays open while the header is mapped: while one connection of this
process has the database open, SQLite neither truncates nor deletes the ``-shm`` file (a
mapped file cut short would kill the process with SIGBUS on the next read).
"""
from __future__ import annotations

import mmap
import os
import sqlite3
from pathlib import Path

from archive.auth.access import Principal
from archive.recent import Recent

from .core import Catalog, InstanceRecord, scope
from .sqlite import SqliteDatabase

#: Two copies of the 48-byte WalIndexHdr: equal unless a writer is between them.
_HEADER = 48
#: Rows kept (about 1 KB each), oldest dropped first. A viewer asks for a few levels at a time.
SIZE = 1024


class WalHeader:
    """The WAL-index header of a SQLite database in WAL mode, read as memory."""

    def __init__(self, path: Path):
        self._keeper = sqlite3.connect(path, check_same_thread=False)
        self._keeper.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # opens and locks the -shm file
        fd = os.open(f"{path}-shm", os.O_RDONLY)
        try:
            self._map = mmap.mmap(fd, 2 * _HEADER, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)

    def version(self) -> bytes | None:
        """The header, or None while a commit is rewriting it."""
        first = self._map[:_HEADER]
        return first if first == self._map[_HEADER:2 * _HEADER] else None

    def close(self) -> None:
        self._map.close()
        self._keeper.close()


class InstanceCache:
    """``Catalog.instance`` for the frame path: the same answer, without SQL while nothing was committed."""

    def __init__(self, catalog: Catalog, header: WalHeader):
        self.catalog, self.header = catalog, header
        self._rows: Recent[tuple, tuple[bytes, InstanceRecord]] = Recent(SIZE)

    @classmethod
    def for_catalog(cls, catalog: Catalog) -> InstanceCache | None:
        """A cache over a SQLite catalog; None for PostgreSQL, or when the header cannot be mapped."""
        if not isinstance(catalog.db, SqliteDatabase):
            return None
        try:
            return cls(catalog, WalHeader(catalog.db.path))
        except (OSError, ValueError, sqlite3.Error):
            return None

    def instance(self, sop_uid: str, *, principal: Principal) -> InstanceRecord | None:
        version = self.header.version()  # before the query: a commit during it makes this row a miss
        if version is None:
            return self.catalog.instance(sop_uid, principal=principal)
        sql, names = scope(principal)
        key = (sop_uid, sql, *names)
        kept = self._rows.get(key)
        if kept is not None and kept[0] == version:
            return kept[1]
        record = self.catalog.instance(sop_uid, principal=principal)
        if record is not None:
            self._rows.put(key, (version, record))
        return record

    def close(self) -> None:
        self.header.close()
