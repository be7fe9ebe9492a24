"""A small bounded map of recent results, shared by the threads of a process.

The instances of a series carry the same sequences byte for byte, so the checks and
conversions that depend on a sequence's bytes alone are done once and looked up for the
next instances (archive.valuecheck, archive.dicomjson). Oldest entries go first; lookups
take no lock (a dict read is atomic), insertions do.
"""
from __future__ import annotations

import threading
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Recent(Generic[K, V]):
    """At most ``entries`` keys; ``get`` answers None for a key not (or no longer) held."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._map: dict[K, V] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        return self._map.get(key)

    def put(self, key: K, value: V) -> None:
        with self._lock:
            while len(self._map) >= self.entries:
                self._map.pop(next(iter(self._map)))  # oldest first
            self._map[key] = value

    def clear(self) -> None:
        with self._lock:
            self._map.clear()

    def __len__(self) -> int:
        return len(self._map)
