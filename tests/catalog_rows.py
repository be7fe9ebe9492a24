"""Every row of a catalog, for the privacy tests' search of what the archive keeps at rest.

A zlib column (the instance's DICOM JSON header) is given as what it holds: compressed,
its bytes hide an identifier from a byte search and can match a short one by chance
(b"DOE" did, in CI).
"""
from __future__ import annotations

import zlib
from pathlib import Path


def postgresql_rows(url: str) -> list[tuple[str, bytes]]:
    """Every row of every table of the PostgreSQL database at ``url``, one (table, bytes) each: zlib
    columns inflated, other binary columns as their bytes, the rest as text."""
    import psycopg

    out = []
    with psycopg.connect(url) as db:
        tables = [t for (t,) in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                out.append((f"catalog table {table}", b"\0".join(
                    _inflated(bytes(v)) if isinstance(v, (bytes, memoryview)) else str(v).encode() for v in row)))
    return out


def sqlite_rows(path: Path) -> tuple[list[tuple[str, bytes]], list[bytes]]:
    """(every row of the SQLite catalog at ``path`` as ``postgresql_rows`` gives them, the zlib values among them)."""
    import sqlite3

    out, compressed = [], []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                compressed += [v for v in row if isinstance(v, bytes) and _inflated(v) is not v]
                out.append((f"catalog table {table}", b"\0".join(
                    _inflated(v) if isinstance(v, bytes) else str(v).encode() for v in row)))
    finally:
        db.close()
    return out, compressed


def without(data: bytes, values: list[bytes], anchor: int = 32) -> bytes:
    """``data`` with every run of bytes that is a piece of one of ``values`` (at least ``anchor``
    bytes long) zeroed: a database file holds a long value in pieces, one per page."""
    out = bytearray(data)
    for value in values:
        i = 0
        while i + anchor <= len(value):
            longest, k = 0, out.find(value[i:i + anchor])
            while k >= 0:
                n = anchor
                while i + n < len(value) and k + n < len(out) and out[k + n] == value[i + n]:
                    n += 1
                out[k:k + n] = bytes(n)
                longest = max(longest, n)
                k = out.find(value[i:i + anchor], k + n)
            i += longest or 1
    return bytes(out)


def _inflated(value: bytes) -> bytes:
    try:
        return zlib.decompress(value)
    except zlib.error:
        return value
