"""DICOM JSON (PS3.18 F.2) of a header, with BulkDataURIs for large binary values.

BulkDataURIs are written relative to the instance (``bulkdata/7FE00010``,
``bulkdata/00480105/0/00282000`` for a nested element) and made absolute when
served, so the catalog never stores a host name.
"""
from __future__ import annotations

import json
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

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
    try:
        return elem.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1 << 30)
    except (ValueError, TypeError, OverflowError):
        # A malformed value (tolerant on read): report the element without a value.
        return {"vr": vr}


def to_json(ds: Dataset, path: str = "") -> dict[str, Any]:
    """DICOM JSON of ``ds``; nested bulk paths carry the sequence tags and item indices."""
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.tag.element == 0 or elem.tag.group in (0x0002, 0xFFFE):
            continue  # group lengths, file meta and item tags are not part of the model
        out[f"{elem.tag:08X}"] = _element(elem, path)
    return out


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
