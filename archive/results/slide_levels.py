"""The pyramid levels of a stored slide series, largest first: what the results API builds against.

Read from the catalog's instance columns (image type, total pixel matrix size), never
from stored headers, which for sparse tiled levels hold megabytes of per-frame data.
"""
from __future__ import annotations

from pydicom.dataset import Dataset

from archive.auth.access import SYSTEM
from archive.catalog import InstanceRecord
from archive.errors import InvalidRequest, NotFound

WSI_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def levels(archive, series_uid: str) -> list[tuple[InstanceRecord, int, int]]:
    """(first instance, columns, rows) per distinct VOLUME level size, largest first."""
    from archive.results.links import _db

    rows = _db(archive.catalog).execute(
        "SELECT i.sop_instance_uid, i.image_type, i.total_pixel_matrix_columns AS cols, "
        "i.total_pixel_matrix_rows AS rows FROM instance i JOIN series se ON i.series_fk=se.pk "
        "WHERE se.series_instance_uid=? AND i.sop_class_uid=? ORDER BY i.pk", (series_uid, WSI_CLASS)).fetchall()
    sizes: dict[tuple[int, int], str] = {}
    for row in rows:
        image_type = (row["image_type"] or "").split("\\")
        if len(image_type) >= 3 and image_type[2] not in ("VOLUME", "THUMBNAIL"):
            continue
        if row["cols"] and row["rows"]:
            sizes.setdefault((int(row["cols"]), int(row["rows"])), row["sop_instance_uid"])
    found = []
    for (cols, height), sop in sorted(sizes.items(), key=lambda kv: -kv[0][0] * kv[0][1]):
        record = archive.catalog.instance(sop, principal=SYSTEM)
        if record is not None:
            found.append((record, cols, height))
    if not found:
        raise NotFound("no such slide (no VL Whole Slide Microscopy VOLUME images in this series)")
    return found


def level(archive, series_uid: str, number: int) -> tuple[InstanceRecord, Dataset, int, int]:
    """Level ``number`` (0 = full resolution): its record, stored header, columns and rows."""
    found = levels(archive, series_uid)
    if not 0 <= number < len(found):
        raise InvalidRequest(f"level must be 0-{len(found) - 1}")
    record, cols, rows = found[number]
    return record, archive.header(record), cols, rows
