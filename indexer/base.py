"""The Index protocol every backend implements, and the errors callers handle.

The catalog is the source of truth: an index only ever holds documents built
from it, so every write here is idempotent and may be repeated after a fault.
"""
from __future__ import annotations

from typing import Any, Iterable, Protocol

from .documents import DocumentError
from .search import BadQuery, SearchRequest, SearchResult

__all__ = ["Index", "Rebuild", "IndexUnavailable", "Unanswerable", "BadQuery", "DocumentError"]


class IndexUnavailable(RuntimeError):
    """The index cannot be reached, is too slow, or is shedding load (HTTP 503); retry later."""


class Unanswerable(ValueError):
    """A QIDO query the index does not translate; the caller asks the catalog instead."""


class Rebuild(Protocol):
    """A new index generation being filled while searches use the current one."""

    def upsert(self, docs: list[dict[str, Any]]) -> list[DocumentError]: ...

    def commit(self) -> None:
        """Make the new generation current (alias swap) and drop the old one."""

    def abort(self) -> None: ...


class Index(Protocol):
    name: str

    def ensure(self) -> None:
        """Create the current generation if there is none (idempotent)."""

    def upsert(self, docs: list[dict[str, Any]]) -> list[DocumentError]:
        """Index documents in bulk; returns the ones the mapping rejected (not raised: the rest went in)."""

    def delete(self, series_uids: list[str]) -> None: ...

    def get(self, series_uid: str) -> dict[str, Any] | None: ...

    def count(self) -> int: ...

    def refresh(self) -> None:
        """Make writes visible to searches now (tests; the worker relies on the periodic refresh)."""

    def search(self, request: SearchRequest) -> SearchResult: ...

    def qido_uids(self, level: str, matches: Iterable[Any], fuzzy: bool, cap: int) -> list[str]:
        """Study or series UIDs matching archive.catalog.query Matches, sorted; Unanswerable beyond ``cap``."""

    def begin_rebuild(self) -> Rebuild: ...

    def close(self) -> None: ...
