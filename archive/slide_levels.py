"""The pyramid levels of a stored slide series, largest first: what the results API builds against."""
from __future__ import annotations

import json

from pydicom.dataset import Dataset

from .catalog import InstanceRecord
from .errors import InvalidRequest, NotFound

WSI_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def _value(header: dict, tag: str):
    value = header.get(tag, {}).get("Value")
    return value if value else None


def levels(archive, series_uid: str) -> list[tuple[InstanceRecord, int, int]]:
    """(first instance, columns, rows) per distinct VOLUME level size, largest first."""
    study = _study_of(archive, series_uid)
    sizes: dict[tuple[int, int], InstanceRecord] = {}
    for record in archive.catalog.instances(study, series_uid):
        if record.sop_class_uid != WSI_CLASS:
            continue
        header = json.loads(archive.catalog.header_json(record.sop_instance_uid) or "{}")
        image_type = _value(header, "00080008") or []
        if len(image_type) >= 3 and image_type[2] not in ("VOLUME", "THUMBNAIL"):
            continue
        cols, rows = _value(header, "00480006"), _value(header, "00480007")
        if not cols or not rows:
            continue
        sizes.setdefault((int(cols[0]), int(rows[0])), record)
    if not sizes:
        raise NotFound("no such slide (no VL Whole Slide Microscopy VOLUME images in this series)")
    return [(r, c, h) for (c, h), r in sorted(sizes.items(), key=lambda kv: -kv[0][0] * kv[0][1])]


def _study_of(archive, series_uid: str) -> str:
    from .result_links import _db

    row = _db(archive.catalog).execute(
        "SELECT st.study_instance_uid FROM series se JOIN study st ON se.study_fk=st.pk "
        "WHERE se.series_instance_uid=?", (series_uid,)).fetchone()
    if row is None:
        raise NotFound("no such slide series")
    return row[0]


def level(archive, series_uid: str, number: int) -> tuple[InstanceRecord, Dataset, int, int]:
    """Level ``number`` (0 = full resolution): its record, stored header, columns and rows."""
    found = levels(archive, series_uid)
    if not 0 <= number < len(found):
        raise InvalidRequest(f"level must be 0-{len(found) - 1}")
    record, cols, rows = found[number]
    return record, archive.header(record), cols, rows
