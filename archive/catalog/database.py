"""What the catalog asks of a database engine, whichever it is.

Statements are written once, with ``?`` parameters, in the SQL both engines run
(``INSERT ... ON CONFLICT DO NOTHING``, ``RETURNING``, window functions). The few
places where the engines differ are a ``Dialect`` each backend module provides:
column types in DDL, string aggregation, GLOB matching, row locking for shared work
and which exceptions mean "duplicate key" or "the engine cannot be reached".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ContextManager, Iterable, Protocol, Sequence

#: LIMIT for "no limit": both engines take a large number (SQLite refuses NULL, PostgreSQL -1).
NO_LIMIT = 2 ** 62


class Dialect(Protocol):
    name: str
    #: Appended to a SELECT that claims rows others may claim at the same time.
    skip_locked: str
    #: Appended to a SELECT whose rows this transaction updates next (others wait for it).
    lock_rows: str
    #: The exception a UNIQUE constraint raises.
    unique_violation: type[BaseException]
    #: What a transaction raises when a concurrent one changed rows it relied on (a study deleted
    #: while an instance joins it, a deadlock between two): running it again sees their outcome.
    conflicts: tuple[type[BaseException], ...]
    #: SQLite's implicit row id of a table, by that engine's name, and the column DDL adds for it.
    rowid: str
    rowid_column: str

    def ddl(self, statement: str) -> str:
        """A schema statement written with SQLite's types, in this engine's types."""

    def group_concat(self, expr: str, separator: str = ",", distinct: bool = False) -> str:
        """An aggregate joining ``expr`` values with ``separator``."""

    def glob(self, expr: str) -> str:
        """A condition: ``expr`` matches the one parameter, a GLOB pattern given to ``glob_pattern``."""

    def glob_pattern(self, pattern: str) -> str:
        """The parameter for ``glob``: ``pattern`` (``*``, ``?``, ``[c]`` escapes) in this engine's syntax."""


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self): ...


class Session(Protocol):
    """A connection inside a transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...


class Database(Protocol):
    """Autocommit statements, transactions, and the engine's dialect."""

    dialect: Dialect
    #: Where it is, for messages (a path, or a URL without its password).
    location: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def transaction(self) -> ContextManager[Session]: ...

    def lock(self, session: Session, name: str) -> None:
        """Hold a lock named ``name`` until the transaction ends (one migrating node at a time)."""

    def close(self) -> None: ...


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and "://" in location


def open_database(location: str | Path, pool_size: int = 8, pool_timeout: float = 5.0) -> Database:
    """The backend for ``location``: a ``postgresql://`` URL (a pool of ``pool_size`` connections,
    waited for at most ``pool_timeout`` seconds), else the path of a SQLite file."""
    if is_url(location):
        scheme = str(location).split("://", 1)[0]
        if scheme not in ("postgresql", "postgres"):
            raise ValueError(f"catalog URL scheme {scheme!r} is not supported (postgresql://...)")
        from .postgresql import PostgresDatabase

        return PostgresDatabase(str(location), max_size=pool_size, timeout=pool_timeout)
    from .sqlite import SqliteDatabase

    return SqliteDatabase(Path(location))

