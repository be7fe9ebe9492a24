"""A small in-node cache of hot byte ranges (frames), bounded in bytes, least recently used out.

Object storage answers a ranged GET in about a millisecond on loopback and tens of
milliseconds across a network; a viewer panning a slide asks for the same tiles again
(its own re-renders, a second viewer on the same slide). Keys are (storage id, offset,
length): stored objects never change, so an entry never goes stale; a deleted object's
entries age out.
"""
from __future__ import annotations

import threading
from collections import OrderedDict


class RangeCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def __contains__(self, key: tuple[str, int, int]) -> bool:
        """Cached already (a prefetch skips it); does not count as a use."""
        return key in self._items

    def put(self, key: tuple[str, int, int], data: bytes) -> None:
        if len(data) > self.max_bytes // 8:  # one huge range must not flush the hot set
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = data
            self.bytes += len(data)
            while self.bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.bytes -= len(old)

    def forget(self, storage_id: str) -> None:
        """Drop every range of ``storage_id`` (it was removed)."""
        with self._lock:
            for key in [k for k in self._items if k[0] == storage_id]:
                self.bytes -= len(self._items.pop(key))
