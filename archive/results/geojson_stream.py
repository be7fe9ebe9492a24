"""Reading a GeoJSON upload incrementally: features one at a time, never the whole body in memory.

A 100,000-cell upload is about 90 MB of JSON and, parsed whole, close to a gigabyte of
Python objects. Here the containers on the way to the feature arrays (the root, an
envelope's ``geojson``) are walked by hand, and every other value, each feature
included, is decoded by the json module's own C decoder (``raw_decode``) from a
window of the stream a few MB wide. Each feature goes to ``on_feature`` as soon as
it is decoded; the returned object has those arrays empty. The decoder is the one
``json.loads`` uses, so what it accepts, and every number's value, is the same.
"""
from __future__ import annotations

import codecs
import json
from typing import Any, BinaryIO, Callable

CHUNK = 1 << 18
MAX_VALUE = 64 << 20  # one feature (or other value) larger than this is refused
#: Where features live: a bare FeatureCollection's ``features``, a bare list, and the same inside ``geojson``.
FEATURE_ARRAYS = frozenset({(), ("features",), ("geojson",), ("geojson", "features")})
_DESCEND = frozenset({(), ("geojson",)})
_WHITESPACE = " \t\n\r"
_DECODER = json.JSONDecoder()


class NotJSON(ValueError):
    """The body is not valid JSON (or a single value in it is unreasonably large)."""


class _Window:
    """The unread part of the stream, decoded to text, grown a chunk at a time."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.text = ""
        self.pos = 0
        self.eof = False
        self.decoder = codecs.getincrementaldecoder("utf-8")()

    def more(self) -> bool:
        if self.eof:
            return False
        data = self.stream.read(max(CHUNK, len(self.text) - self.pos))  # doubling: a big value is re-read rarely
        try:
            fresh = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError:
            raise NotJSON("not UTF-8") from None
        self.eof = not data
        self.text = self.text[self.pos:] + fresh
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next character that is not whitespace ('' at the end)."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.text) or not self.more():
                return self.text[self.pos:self.pos + 1]

    def take(self, char: str) -> None:
        if self.peek() != char:
            raise NotJSON(f"expected {char!r}")
        self.pos += 1

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                if len(self.text) - self.pos > MAX_VALUE or not self.more():
                    raise NotJSON("invalid JSON") from None
                continue
            if end == len(self.text) and not self.eof and isinstance(value, (int, float)):
                self.more()  # a number at the window's edge may go on in the next chunk
                continue
            self.pos = end
            return value


Sink = Callable[[tuple[str, ...], Any], None]


def read(stream: BinaryIO, on_feature: Sink) -> Any:
    """The body's JSON value, each item of a feature array passed to ``on_feature(path, item)`` instead."""
    window = _Window(stream)
    value = _value(window, (), on_feature)
    if window.peek() != "":
        raise NotJSON("extra data after the JSON value")
    return value


def _value(window: _Window, path: tuple[str, ...], on_feature: Sink) -> Any:
    first = window.peek()
    if first == "[" and path in FEATURE_ARRAYS:
        _features(window, path, on_feature)
        return []
    if first == "{" and path in _DESCEND:
        return _object(window, path, on_feature)
    return window.value()


def _object(window: _Window, path: tuple[str, ...], on_feature: Sink) -> dict[str, Any]:
    window.take("{")
    out: dict[str, Any] = {}
    if window.peek() == "}":
        window.pos += 1
        return out
    while True:
        if window.peek() != '"':
            raise NotJSON("expected a key")
        key = window.value()
        window.take(":")
        out[key] = _value(window, path + (key,), on_feature)
        if window.peek() == ",":
            window.pos += 1
            continue
        window.take("}")
        return out


def _features(window: _Window, path: tuple[str, ...], on_feature: Sink) -> None:
    window.take("[")
    if window.peek() == "]":
        window.pos += 1
        return
    while True:
        on_feature(path, window.value())
        if window.peek() == ",":
            window.pos += 1
            continue
        window.take("]")
        return
