"""SQLite connections shared by the catalog and the embedded index: one per thread, WAL mode."""
from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Iterator


class Connections:
    """A connection per thread (sqlite3 connections must not cross threads), autocommit
    unless inside ``transaction()``, which takes the write lock up front (BEGIN IMMEDIATE)."""

    def __init__(self, path: Path, pragmas: tuple[str, ...] = (), timeout: float = 30,
                 row_factory: Callable | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.pragmas = ("journal_mode=WAL", *pragmas)
        self.timeout = timeout
        self.row_factory = row_factory
        self._local = threading.local()

    def get(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            if self.row_factory is not None:
                db.row_factory = self.row_factory
            for pragma in self.pragmas:
                db.execute(f"PRAGMA {pragma}")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.get()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
