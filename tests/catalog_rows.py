"""Every row of a catalog, for the privacy tests' search of what the archive keeps at rest.

A zlib column (the instance's DICOM JSON header) is given as what it holds: compressed,
its bytes hide an identifier from a byte search and can match a short one by chance
(b"DOE" did, in CI).
"""
from __future__ import annotations

import zlib
from pathlib import Path


def postgresql_rows(url: str) -> list[tuple[str, bytes]]:
    """Every row of every table of the PostgreSQL database at ``url``, as ``_dump`` gives them."""
    import psycopg

    with psycopg.connect(url) as db:
        return _dump(db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")[0]


def sqlite_rows(path: Path) -> tuple[list[tuple[str, bytes]], list[bytes]]:
    """Every row of the SQLite catalog at ``path``, and the zlib values among them (``_dump``)."""
    import sqlite3

    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _dump(db, "SELECT name FROM sqlite_master WHERE type = 'table'")
    finally:
        db.close()


def _dump(db, tables_sql: str) -> tuple[list[tuple[str, bytes]], list[bytes]]:
    """(one (table, bytes) per row of each table ``tables_sql`` names: zlib columns inflated, other
    binary columns as their bytes, the rest as text; the zlib values as stored)."""
    out, compressed = [], []
    for (table,) in db.execute(tables_sql).fetchall():
        for row in db.execute(f'SELECT * FROM "{table}"').fetchall():
            fields = []
            for value in row:
                if isinstance(value, (bytes, memoryview)):
                    value = bytes(value)
                    inflated = _inflated(value)
                    if inflated is not None:
                        compressed.append(value)
                    fields.append(value if inflated is None else inflated)
                else:
                    fields.append(str(value).encode())
            out.append((f"catalog table {table}", b"\0".join(fields)))
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


def _inflated(value: bytes) -> bytes | None:
    """What a zlib value holds; None for bytes that are not one."""
    try:
        return zlib.decompress(value)
    except zlib.error:
        return None
