"""DICOM JSON (PS3.18 F.2) of a header, with BulkDataURIs for large binary values.

BulkDataURIs are written relative to the instance (``bulkdata/7FE00010``,
``bulkdata/00480105/0/00282000`` for a nested element) and made absolute when
served, so the catalog never stores a host name.
"""
from __future__ import annotations

import json
import struct
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from archive.rawitems import Unusual as _Unusual, items as _items
from archive.recent import Recent

BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
#: Binary values up to this size are inlined (a short LUT); larger ones become bulkdata.
INLINE_LIMIT = 64
BULK_MARK = '"BulkDataURI":"'


def _element(elem: DataElement, path: str) -> dict[str, Any]:
    vr = elem.VR
    if vr == "SQ":
        return {"vr": "SQ", "Value": [to_json(item, f"{path}{elem.tag:08X}/{i}/") for i, item in enumerate(elem.value)]}
    if vr in BINARY_VRS or elem.tag == 0x7FE00010:
        value = elem.value
        if elem.tag == 0x7FE00010 or value is None or len(value) > INLINE_LIMIT:
            return {"vr": vr, "BulkDataURI": f"bulkdata/{path}{elem.tag:08X}"}
    simple = _simple_value(vr, elem.value)
    if simple is not None:
        return simple
    try:
        return elem.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1 << 30)
    except (ValueError, TypeError, OverflowError):
        # A malformed value (tolerant on read): report the element without a value.
        return {"vr": vr}


#: VRs whose converted value pydicom's ``to_json_dict`` puts in the JSON as it is (no number conversion).
_PLAIN_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_NUMBER_TYPES = {"US": int, "UL": int, "SS": int, "SL": int, "UV": int, "SV": int, "FL": float, "FD": float}


def _simple_value(vr: str, value: Any) -> dict[str, Any] | None:
    """``to_json_dict`` of a converted element whose value is plain (None, a string, one number, or
    several strings), or None for pydicom to do it: after de-identification ~35 elements of a small
    instance are converted ones (new UIDs, dates, the method codes), and pydicom's generic path,
    with its VM and emptiness checks, was most of ``to_json``'s time. The very value objects go in
    (a UID stays a UID), as pydicom puts them."""
    if value is None:
        return {"vr": vr} if vr in _PLAIN_TEXT_VRS or vr in _NUMBER_TYPES else None
    kind = type(value)
    if vr in _PLAIN_TEXT_VRS:
        if isinstance(value, str):
            return {"vr": vr, "Value": [value]} if value else {"vr": vr}
        if kind is MultiValue and (len(value) == 0 or len(value) > 1 and all(isinstance(v, str) for v in value)):
            return {"vr": vr, "Value": list(value)} if value else {"vr": vr}  # one value: pydicom's own way
        return None
    number = _NUMBER_TYPES.get(vr)
    if number is not None and kind is number:
        return {"vr": vr, "Value": [value]}
    return None


def to_json(ds: Dataset, path: str = "") -> dict[str, Any]:
    """DICOM JSON of ``ds``; nested bulk paths carry the sequence tags and item indices.

    Elements pydicom has not parsed yet (sequences included) are converted from their
    bytes where that is simple (``_from_bytes``): pydicom's own parsing and conversion
    was most of the CPU of storing a small instance. The answer is the same either
    way; anything unusual (other character sets, implicit VR, UN) goes through pydicom.
    """
    out: dict[str, Any] = {}
    for tag in sorted(ds.keys(), key=int):  # as plain ints: BaseTag's own comparison is Python code
        number = int(tag)
        if number & 0xFFFF == 0 or number >> 16 in (0x0002, 0xFFFE):
            continue  # group lengths, file meta and item tags are not part of the model
        raw = ds._dict[tag]  # what ``get_item`` answers, without its tag conversion (twice per element)
        if isinstance(raw, RawDataElement) and raw.value is None:
            raw = ds.get_item(tag)  # a deferred value: read and converted, as get_item does
        fast = None
        if isinstance(raw, RawDataElement) and raw.VR is not None and raw.is_little_endian and raw.value is not None:
            recent = raw.VR == "SQ" and len(raw.value) <= _RECENT_MAX
            fast = _sequences.get((number, raw.value, path)) if recent else None
            if fast is None:
                fast = _from_bytes(number, raw.VR, raw.value, path)
                if fast is not None and recent:
                    _sequences.put((number, raw.value, path), fast)
                    _texts.put(id(fast), [fast, None, None])
        if fast is None:  # converted already (``ds[tag]`` would answer the same element), or converted now
            fast = _element(raw if isinstance(raw, DataElement) else ds[tag], path)
        out[f"{tag:08X}"] = fast
    return out


#: The DICOM JSON of recent raw sequences up to _RECENT_MAX bytes, by (tag, bytes, path): the
#: instances of a series share their sequences byte for byte (the very same bytes object once
#: de-identified, deid.seqcache), so most lookups are identity hits. Values are shared: callers of
#: ``to_json`` must not change what it returns inside sequences.
_RECENT_MAX = 256 * 1024
_sequences: Recent[tuple[int, bytes, str], dict[str, Any]] = Recent(256)
#: The JSON text of those shared values, compact and with json's default separators, made
#: on first use (``encode``) by id: the entry holds the value, so the id names no other.
_texts: Recent[int, list] = Recent(256)
_ENCODERS = (json.JSONEncoder(), json.JSONEncoder(separators=(",", ":")))
_STRUCTS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_SPLIT_STRIP = frozenset({"AS", "CS", "DA", "DT", "TM", "UI"})  # ASCII; padding off the end, then split
_TEXT = frozenset({"SH", "LO", "UC"})  # split, then padding off each value
_SINGLE_TEXT = frozenset({"ST", "LT", "UT"})  # never split
_EMPTY_OK = frozenset(_STRUCTS) | _SPLIT_STRIP | _TEXT | _SINGLE_TEXT | {"IS", "DS", "SQ", "AT"}
def _from_bytes(tag: int, vr: str, value: bytes, path: str) -> dict[str, Any] | None:
    """DICOM JSON of one explicit VR little endian element from its value bytes, or None."""
    try:
        return _convert(tag, vr, value, path)
    except (_Unusual, struct.error, ValueError, UnicodeDecodeError):
        return None


def _convert(tag: int, vr: str, value: bytes, path: str) -> dict[str, Any]:
    if vr == "SQ":
        items = _items(value)
        prefix = f"{path}{tag:08X}/"
        return {"vr": "SQ", "Value": [_item_json(item, f"{prefix}{i}/") for i, item in enumerate(items)]}
    if vr == "UN":
        raise _Unusual  # pydicom gives a known tag its dictionary VR
    if vr in BINARY_VRS:
        if len(value) > INLINE_LIMIT:
            return {"vr": vr, "BulkDataURI": f"bulkdata/{path}{tag:08X}"}
        raise _Unusual  # short binary values are inlined by pydicom
    if not value:
        if vr in _EMPTY_OK:
            return {"vr": vr}
        raise _Unusual
    if vr in _STRUCTS:
        code = _STRUCTS[vr]
        size = struct.calcsize(code)
        if len(value) % size:
            raise _Unusual
        return {"vr": vr, "Value": list(struct.unpack(f"<{len(value) // size}{code}", value))}
    if vr == "AT":
        if len(value) % 4:
            raise _Unusual
        pairs = struct.unpack(f"<{len(value) // 2}H", value)
        return {"vr": "AT", "Value": [f"{g:04X}{e:04X}" for g, e in zip(pairs[::2], pairs[1::2])]}
    if not value.isascii() or b"\x1b" in value:
        raise _Unusual  # other character sets: pydicom decodes them
    text = value.decode("ascii")
    if vr in _SPLIT_STRIP:
        strings = text.rstrip(" \x00").split("\\")
    elif vr in _TEXT:
        strings = [v.rstrip("\x00 ") for v in text.split("\\")]
    elif vr in _SINGLE_TEXT:
        strings = [text.rstrip("\x00 ")]
    elif vr in ("IS", "DS"):
        parts = text.strip(" \x00").split("\\")
        return {"vr": vr, "Value": [int(v) if vr == "IS" else float(v) for v in parts]}  # ValueError: pydicom's way
    else:
        raise _Unusual
    return {"vr": vr} if strings == [""] else {"vr": vr, "Value": strings}


def _item_json(elements: list[tuple[int, str, bytes]], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag, vr, value in sorted(elements, key=lambda e: e[0]):
        if tag & 0xFFFF == 0 or tag >> 16 in (0x0002, 0xFFFE):
            continue
        if tag >> 16 & 1 and vr not in BINARY_VRS:
            raise _Unusual  # private elements: pydicom knows some of their VRs
        out[f"{tag:08X}"] = _convert(tag, vr, value, path)
    return out


def encode(obj: dict[str, Any], compact: bool) -> str:
    """``json.dumps(obj)`` (or with ``separators=(",", ":")`` when ``compact``), the same text,
    with the text of shared sequence values (``_texts``) encoded once, not once per instance:
    a series' specimen description was most of the catalog's JSON encoding of a small instance."""
    encoder = _ENCODERS[compact]
    item, key = (",", ":") if compact else (", ", ": ")
    parts: list[str] = []
    run: dict[str, Any] = {}  # consecutive elements without a kept text: encoded together
    for tag, value in obj.items():
        entry = _texts.get(id(value))
        if entry is None or entry[0] is not value:
            run[tag] = value
            continue
        if run:
            parts.append(encoder.encode(run)[1:-1])
            run = {}
        text = entry[1 + compact]
        if text is None:
            text = entry[1 + compact] = encoder.encode(value)
        parts.append(encoder.encode(tag) + key + text)
    if run:
        parts.append(encoder.encode(run)[1:-1])
    return "{" + item.join(parts) + "}"


def dumps(obj: Any) -> str:
    """Compact JSON, so BulkDataURIs can be made absolute with one string replace."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def absolute_bulk_uris(text: str, instance_url: str) -> str:
    return text.replace(BULK_MARK, BULK_MARK + instance_url + "/")


def bulk_path(path: str) -> list[int | str]:
    """Parse ``00480105/0/00282000`` into [tag, index, tag]; raises ValueError if malformed."""
    parts = path.strip("/").split("/")
    if len(parts) % 2 != 1:
        raise ValueError("bulkdata path must alternate tag/item/tag")
    out: list[int | str] = []
    for i, part in enumerate(parts):
        out.append(int(part, 16) if i % 2 == 0 else int(part))
    return out


def resolve(ds: Dataset, path: list[int | str]) -> DataElement:
    """Follow a parsed bulk path into ``ds``; raises KeyError/IndexError when absent."""
    current: Any = ds
    for i, step in enumerate(path):
        if i % 2 == 0:
            elem = current[step]
            if i == len(path) - 1:
                return elem
            current = elem.value
        else:
            current = current[step]
    raise KeyError("empty path")
