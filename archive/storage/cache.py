"""A small in-node cache of hot byte ranges (frames), bounded in bytes, least recently used out.

Object storage answers a ranged GET in about a millisecond on loopback and tens of
milliseconds across a network; a viewer panning a slide asks for the same tiles again
(its own re-renders, a second viewer on the same slide). Keys are (storage id, offset,
length): stored objects never change, so an entry never goes stale; a deleted object's
entries age out. ``InFlight`` makes concurrent misses of the same ranges share one fetch.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future


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


Key = tuple[str, int, int]


class InFlight:
    """The ranges being fetched right now, each with the future its fetcher will settle.

    A viewer asks for several neighbouring tiles at once: without this, each request that
    misses reads the same tiles ahead with a GET of its own. With it, the first request's
    GET carries the tiles, and the requests for them wait for that answer.
    """

    def __init__(self) -> None:
        self._pending: dict[Key, Future] = {}
        self._lock = threading.Lock()

    def claim(self, wanted: list[Key], prefetch: list[Key]) -> tuple[list[Key], dict[Key, Future], Future]:
        """(the keys the caller fetches now, the wanted keys it waits for, the future to settle).

        Prefetch keys ride along with a fetch the caller makes anyway, never alone: a caller
        waiting for all it wants leaves reading ahead to the next miss.
        """
        future: Future = Future()
        with self._lock:
            waits = {k: self._pending[k] for k in wanted if k in self._pending}
            fetch = wanted + prefetch if len(waits) < len(set(wanted)) else []
            mine = [k for k in dict.fromkeys(fetch) if k not in self._pending]
            for k in mine:
                self._pending[k] = future
        return mine, waits, future

    def settle(self, future: Future, keys: list[Key], fetched: dict[Key, bytes] | None,
               error: BaseException | None = None) -> None:
        """The fetch of ``keys`` ended: wake those waiting on it (with the bytes, or the error)."""
        with self._lock:
            for k in keys:
                if self._pending.get(k) is future:
                    del self._pending[k]
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(fetched)
