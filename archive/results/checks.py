"""Checks on AI results at ingest: bulk annotations and segmentations must be sound and point at slides we hold.

Ingest calls :func:`check_result` once per instance, on the header it is about
to store (de-identified, so references carry the mapped UIDs). Every other SOP
class returns at the first line, so slides pay nothing. After the catalog
commit ingest calls :func:`record` so the result is linked to its slides
(``archive.results.links``).

Dangling references are refused (``ReferenceNotFound``, HTTP 409 / DIMSE A900)
unless ``[results] dangling_references = "warn"``, which stores the result and
answers warning 0xB007 instead.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from archive.auth.access import SYSTEM
from archive.errors import DatasetDoesNotMatchSOPClass, ReferenceNotFound
from archive.results import measurement_reports
from archive.results import links as result_links
from archive.results.references import referenced_instances

log = logging.getLogger(__name__)

ANN_CLASS = "1.2.840.10008.5.1.4.1.1.91.1"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"
RESULT_CLASSES = frozenset({ANN_CLASS, SEG_CLASS, LABELMAP_CLASS})
MAX_REFERENCES = 1000
_GRAPHIC_POINTS = {"POINT": 1, "RECTANGLE": 4, "ELLIPSE": 4}
_MIN_POINTS = {"POLYLINE": 2, "POLYGON": 3}


def check_result(ds: Dataset, catalog, path: Path, policy: str = "refuse") -> str | None:
    """Validate a result instance; returns a warning message, or None. Raises on refusal.

    ``ds`` is the header to be stored, ``path`` the file as it will be stored
    (a segmentation is read whole from it, as highdicom wants; large values such as
    the pixel data stay on disk, deferred).
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == measurement_reports.SR_CLASS:
        if not measurement_reports.is_measurement_report(ds):
            return None  # another kind of SR document: stored as any instance, not a result
        frames = {roi["frame_of_reference"] for roi in measurement_reports.check(ds)}
        return _references_checked(ds, catalog, policy, frames)
    if sop_class not in RESULT_CLASSES:
        return None
    if sop_class == ANN_CLASS:
        check_annotation_arrays(ds)
        _highdicom_parse(ds, sop_class)
    else:
        try:
            full = dcmread(path, defer_size="64 KB")  # highdicom needs the whole data set, not the pixels in memory
        except Exception as e:  # noqa: BLE001 - any failure is the same answer
            raise DatasetDoesNotMatchSOPClass(f"segmentation cannot be read: {type(e).__name__}") from None
        _highdicom_parse(full, sop_class)
    own = ds.get("FrameOfReferenceUID")
    return _references_checked(ds, catalog, policy, {str(own)} if own else set())


def _references_checked(ds: Dataset, catalog, policy: str, frames: set[str]) -> str | None:
    problems = reference_problems(ds, catalog, frames)
    if not problems:
        return None
    message = "; ".join(problems)
    if policy == "warn":
        log.warning("result %s stored with dangling references", ds.SOPInstanceUID)
        return message
    raise ReferenceNotFound(message)


def record(catalog, ds: Dataset) -> None:
    """Link a just-committed result to its slides. Never raises: the instance is stored either way,
    and ``result_links.sync`` (run by every results read) repairs a link that failed here."""
    try:
        result_links.record(catalog, ds)
    except Exception:  # noqa: BLE001
        log.exception("linking result %s failed; it will be linked on the next results read",
                      ds.get("SOPInstanceUID"))
        try:
            result_links.release(catalog, str(ds.SOPInstanceUID))
        except Exception:  # noqa: BLE001 - the catalog is down: the item comes back when its lease runs out
            pass


def _highdicom_parse(ds: Dataset, sop_class: str) -> None:
    """highdicom's reading of the object must succeed: it is what viewers and our API use."""
    import highdicom as hd

    try:
        if sop_class == ANN_CLASS:
            ann = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(ds, copy=True)
            for group in ann.get_annotation_groups():
                group.get_graphic_data(ann.annotation_coordinate_type)
        else:
            hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception as e:  # noqa: BLE001 - highdicom raises many types; the class is the message
        kind = "annotation" if sop_class == ANN_CLASS else "segmentation"
        text = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise DatasetDoesNotMatchSOPClass(f"not a valid {kind} object per highdicom: {text}") from None


def check_annotation_arrays(ds: Dataset) -> None:
    """Each annotation group's arrays must agree with Number of Annotations and Graphic Type.

    highdicom decodes lazily and would not notice; a viewer would draw garbage.
    """
    coordinate_dims = 3 if ds.get("AnnotationCoordinateType") == "3D" else 2
    groups = ds.get("AnnotationGroupSequence")
    if not groups:
        raise DatasetDoesNotMatchSOPClass("missing AnnotationGroupSequence")
    for g, item in enumerate(groups, 1):
        where = f"annotation group {g}"
        count = item.get("NumberOfAnnotations")
        graphic = str(item.get("GraphicType", ""))
        if count is None or int(count) < 1:
            raise DatasetDoesNotMatchSOPClass(f"{where}: NumberOfAnnotations missing or zero")
        count = int(count)
        if "DoublePointCoordinatesData" in item:
            raw, itemsize = item.DoublePointCoordinatesData, 8
        elif "PointCoordinatesData" in item:
            raw, itemsize = item.PointCoordinatesData, 4
        else:
            raise DatasetDoesNotMatchSOPClass(f"{where}: no point coordinates data")
        dims = 2 if (coordinate_dims == 2 or "CommonZCoordinateValue" in item) else 3
        if raw is None or len(raw) % (itemsize * dims):
            raise DatasetDoesNotMatchSOPClass(f"{where}: coordinates are not a whole number of {dims}D points")
        values = len(raw) // itemsize
        points = values // dims
        if graphic in _GRAPHIC_POINTS:
            if points != count * _GRAPHIC_POINTS[graphic]:
                raise DatasetDoesNotMatchSOPClass(
                    f"{where}: {points} points for {count} {graphic} annotations "
                    f"(expected {count * _GRAPHIC_POINTS[graphic]})")
        elif graphic in _MIN_POINTS:
            _check_point_index(item, where, count, values, dims, _MIN_POINTS[graphic])
        else:
            raise DatasetDoesNotMatchSOPClass(f"{where}: unknown GraphicType")
        _check_measurements(item, where, count)


def _check_point_index(item: Dataset, where: str, count: int, values: int, dims: int, minimum: int) -> None:
    raw = item.get("LongPrimitivePointIndexList")
    if raw is None or len(raw) % 4:
        raise DatasetDoesNotMatchSOPClass(f"{where}: LongPrimitivePointIndexList missing or malformed")
    index = np.frombuffer(raw, dtype="<i4").astype(np.int64)
    if len(index) != count:
        raise DatasetDoesNotMatchSOPClass(f"{where}: {len(index)} point index entries for {count} annotations")
    ends = np.append(index[1:], values + 1)
    spans = ends - index
    if index[0] != 1 or np.any(spans <= 0) or np.any((index - 1) % dims) or np.any(spans < minimum * dims):
        raise DatasetDoesNotMatchSOPClass(
            f"{where}: point index list does not split the coordinates into annotations of at least {minimum} points")


def _check_measurements(item: Dataset, where: str, count: int) -> None:
    for m, measurement in enumerate(item.get("MeasurementsSequence", []), 1):
        values_items = measurement.get("MeasurementValuesSequence") or []
        if len(values_items) != 1:
            raise DatasetDoesNotMatchSOPClass(f"{where}, measurement {m}: needs one MeasurementValuesSequence item")
        values = values_items[0]
        n = len(values.get("FloatingPointValues") or b"") // 4
        if "AnnotationIndexList" in values:
            index = np.frombuffer(values.AnnotationIndexList or b"", dtype="<u4")
            if len(index) != n or np.any(index < 1) or np.any(index > count):
                raise DatasetDoesNotMatchSOPClass(f"{where}, measurement {m}: AnnotationIndexList disagrees with values")
        elif n != count:
            raise DatasetDoesNotMatchSOPClass(f"{where}, measurement {m}: {n} values for {count} annotations")


# --- references -----------------------------------------------------------------------


def reference_problems(ds: Dataset, catalog, frames: set[str]) -> list[str]:
    """What is wrong with the result's references: none, missing slides, another frame of reference
    than one of ``frames`` (the result's own frames of reference; empty for 2D annotations).

    Messages carry no UIDs of patients' data beyond counts and attribute names.
    """
    refs = referenced_instances(ds)
    if not refs:
        return ["references no source image (ReferencedSeriesSequence / SourceImageSequence empty)"]
    if len(refs) > MAX_REFERENCES:
        raise DatasetDoesNotMatchSOPClass(f"more than {MAX_REFERENCES} referenced images")
    missing, wrong_series, wrong_for = 0, 0, 0
    for series, sop in refs:
        record = catalog.instance(sop, principal=SYSTEM)
        if record is None:
            missing += 1
            continue
        if series and record.series_uid != series:
            wrong_series += 1
        if frames:
            slide_for = _frame_of_reference(catalog, sop)
            if slide_for and frames != {slide_for}:
                wrong_for += 1
    problems = []
    if missing:
        problems.append(f"{missing} of {len(refs)} referenced source images are not in the archive")
    if wrong_series:
        problems.append(f"{wrong_series} referenced source images are in another series than ReferencedSeriesSequence says")
    if wrong_for:
        problems.append(f"FrameOfReferenceUID differs from that of {wrong_for} referenced source images")
    return problems


def _frame_of_reference(catalog, sop_uid: str) -> str | None:
    import json

    text = catalog.header_json(sop_uid)
    if not text:
        return None
    value = json.loads(text).get("00200052", {}).get("Value")
    return str(value[0]) if value else None
