"""De-identified top-level sequences remembered by their received bytes.

The instances of one scan (the tiles and levels of a slide, a pipeline's results)
carry the same Specimen Description, Optical Path, Dimension Organization and
Shared Functional Groups sequences byte for byte. Walking such a sequence through
the profile means parsing every item with pydicom, and writing it means encoding
every item again: about half the CPU of storing a small instance. The outcome is a
pure function of the bytes, the context (policy, key, SOP class, patient, terms to
scrub) and the encoding, so it is computed once and kept here, already encoded, as a
raw element that the writer copies and the DICOM JSON reads from its bytes.

Keys are SHA-256 digests, never the received bytes: no original value stays in
memory once its instance is stored. Values are the de-identified sequences only.
The cache is bounded in bytes (least recently used entries go first) and shared by
the threads of a process.
"""
from __future__ import annotations

import hashlib
import struct
import threading
from collections import OrderedDict
from typing import Any, Callable

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.tag import BaseTag

from archive.encoding import mark_unchanged
from archive.headerwrite import encode_element

#: Sequences longer than this (per-frame functional groups of a large level) are not kept:
#: hashing them costs about what the raw scan that usually leaves them untouched costs.
MAX_ENTRY = 256 * 1024
#: All kept sequences together, in bytes.
MAX_TOTAL = 8 * 1024 * 1024
_UNDEFINED = 0xFFFFFFFF

#: Marks a sequence the profile leaves as it is: the received element is kept.
UNCHANGED = object()


class SequenceCache:
    """Bounded LRU of (context, element bytes) digest -> de-identified raw element (0 bytes: off)."""

    def __init__(self, max_total: int = MAX_TOTAL) -> None:
        self.max_total = max_total
        self._entries: OrderedDict[bytes, Any] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, key: bytes) -> Any:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: bytes, value: Any) -> None:
        size = _size(value)
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = value
            self._total += size
            while self._total > self.max_total and self._entries:
                _, old = self._entries.popitem(last=False)
                self._total -= _size(old)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._total = 0


def _size(value: Any) -> int:
    return 64 + (len(value.value) if isinstance(value, RawDataElement) and value.value else 0)


CACHE = SequenceCache()


def key_of(context: bytes, elem: RawDataElement, charset: Any, text_mode: str | None) -> bytes:
    """Digest of everything the de-identified sequence depends on."""
    h = hashlib.sha256(context)
    h.update(struct.pack("<I??", int(elem.tag), bool(elem.is_implicit_VR), bool(elem.is_little_endian)))
    h.update(repr((charset, text_mode)).encode())
    h.update(elem.value)
    return h.digest()


def cacheable(elem: Any) -> bool:
    """A received top-level sequence still in its bytes (defined length), small enough to keep."""
    return (isinstance(elem, RawDataElement) and elem.value is not None
            and 0 < len(elem.value) <= MAX_ENTRY and elem.is_little_endian is not None)


def encoded(new: DataElement, received: RawDataElement, charset: Any) -> RawDataElement:
    """``new`` as the raw element the writer would have produced for it, in the received encoding.

    Encoded as pydicom's element writer would (archive.headerwrite), so the stored bytes
    are exactly those of writing the parsed sequence; the writer copies a raw element as it is.
    """
    return as_raw(new, charset, bool(received.is_implicit_VR), bool(received.is_little_endian))


def as_raw(new: DataElement, charset: Any, implicit: bool, little: bool) -> RawDataElement:
    """The parsed sequence ``new`` as the raw element the writer would have produced for it."""
    for item in new.value:
        mark_unchanged(item)  # as archive.ingest does before writing: raw elements copied, not re-encoded
    data = encode_element(new, charset, implicit, little)
    head = 8 if implicit else 12  # tag, (VR, reserved,) 4-byte length
    length = struct.unpack_from("<I" if little else ">I", data, head - 4)[0]
    value = data[head:-8] if length == _UNDEFINED else data[head:]  # the writer adds the delimiter back
    return RawDataElement(BaseTag(new.tag), "SQ", length, value, 0, implicit, little)


def deidentified(elem: RawDataElement, context: bytes, charset: Any, text_mode: str | None,
                 compute: Callable[[], Any]) -> Any:
    """The de-identified form of a received top-level sequence: from the cache, or
    ``compute()`` (the walk) encoded and kept. ``compute`` returns the received element
    itself when nothing in it changes, or None when the profile removes it."""
    if CACHE.max_total <= 0:  # switched off: the walk's own element, as before the cache
        return compute()
    key = key_of(context, elem, charset, text_mode)
    hit = CACHE.get(key)
    if hit is UNCHANGED:
        return elem
    if hit is not None:
        return hit
    new = compute()
    if new is None:
        return None  # removed: cheap to decide again, nothing to keep
    if new is elem:
        CACHE.put(key, UNCHANGED)
        return elem
    if not isinstance(new, DataElement) or new.VR != "SQ":
        return new
    raw = encoded(new, elem, charset)
    CACHE.put(key, raw)
    return raw
