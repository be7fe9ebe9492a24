"""The SQLite catalog backend: one file under the data directory, the embedded default.

A connection per thread (see ``connections.py``); a transaction takes the write lock
up front, so one writer at a time and no row locking is needed.
"""
from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Sequence

from archive.catalog.connections import Connections


class SqliteDialect:
    name = "sqlite"
    skip_locked = ""  # BEGIN IMMEDIATE already serializes writers
    lock_rows = ""
    unique_violation = sqlite3.IntegrityError
    conflicts = ()  # BEGIN IMMEDIATE: one writer at a time, nothing changes under a transaction
    rowid = "rowid"
    rowid_column = ""

    def ddl(self, statement: str) -> str:
        return statement

    def group_concat(self, expr: str, separator: str = ",", distinct: bool = False) -> str:
        if distinct:  # SQLite's DISTINCT aggregate takes one argument: "," is its separator
            return f"group_concat(DISTINCT {expr})"
        return f"group_concat({expr}, '{separator}')"

    def glob(self, expr: str) -> str:
        return f"{expr} GLOB ?"

    def glob_pattern(self, pattern: str) -> str:
        return pattern


class SqliteDatabase:
    dialect = SqliteDialect()

    def __init__(self, path: Path):
        self.path = Path(path)
        self.location = str(self.path)
        self._connections = Connections(self.path, ("synchronous=FULL", "foreign_keys=ON"), timeout=60,
                                        row_factory=sqlite3.Row)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._connections.get().execute(sql, params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connections.transaction() as db:
            yield db

    def lock(self, session: sqlite3.Connection, name: str) -> None:
        """The transaction already holds the database's write lock."""

    def close(self) -> None:
        self._connections.close()
