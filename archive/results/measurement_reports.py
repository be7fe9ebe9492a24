"""Comprehensive 3D SR measurement reports (TID 1500) on slides: what Slim saves for drawn regions.

A report holds Measurement Groups (TID 1410, "Planar ROI Measurements and Qualitative
Evaluations"), each one region of interest as an SCOORD3D content item in the slide's
frame of reference (millimetres, slide coordinate system), a finding and measurements.
The slides it describes are named in the evidence sequences (Current Requested
Procedure Evidence / Pertinent Other Evidence).

This module checks that structure on the way in, extracts what the results tables
index (one group per finding and graphic type, with the number of regions), and maps
regions to level-0 pixel coordinates for GeoJSON, with the same affine as
dicom-microscopy-viewer (pixel (0, 0) is the top-left corner of the top-left pixel).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
from pydicom.dataset import Dataset

from archive.errors import DatasetDoesNotMatchSOPClass

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
REPORT = ("126000", "DCM")  # Imaging Measurement Report (TID 1500 root)
IMAGING_MEASUREMENTS = ("126010", "DCM")
MEASUREMENT_GROUP = ("125007", "DCM")
FINDING = ("121071", "DCM")
TRACKING_UID = ("112040", "DCM")
PERSON_OBSERVER_NAME = ("121008", "DCM")
MAX_ROIS = 1_000_000
_FIXED_POINTS = {"POINT": 1, "ELLIPSE": 4, "ELLIPSOID": 6}
_MIN_POINTS = {"MULTIPOINT": 1, "POLYLINE": 2, "POLYGON": 4}  # a POLYGON repeats its first point


def _concept(item: Dataset) -> tuple[str, str] | None:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return None
    return str(seq[0].get("CodeValue", "")), str(seq[0].get("CodingSchemeDesignator", ""))


def _code_value(item: Dataset) -> tuple[str | None, str | None, str | None]:
    seq = item.get("ConceptCodeSequence")
    if not seq:
        return None, None, None
    c = seq[0]
    return (str(c.get("CodeValue") or c.get("LongCodeValue") or c.get("URNCodeValue") or "") or None,
            c.get("CodingSchemeDesignator"), c.get("CodeMeaning"))


def is_measurement_report(ds: Dataset) -> bool:
    """A Comprehensive 3D SR whose root container is TID 1500 Imaging Measurement Report."""
    return str(ds.get("SOPClassUID", "")) == SR_CLASS and _concept(ds) == REPORT


def _children(item: Dataset, concept: tuple[str, str]) -> list[Dataset]:
    return [c for c in item.get("ContentSequence", []) if _concept(c) == concept]


def regions(ds: Dataset) -> list[dict[str, Any]]:
    """Every region of interest of the report, checked; raises DatasetDoesNotMatchSOPClass.

    Each: {"number", "tracking_uid", "finding": (code, scheme, meaning), "graphic_type",
    "points": (N, 3) float64 array, "frame_of_reference", "measurements": [names]}.
    """
    containers = _children(ds, IMAGING_MEASUREMENTS)
    if len(containers) != 1:
        raise DatasetDoesNotMatchSOPClass(
            f"TID 1500 report needs one Imaging Measurements container, found {len(containers)}")
    found: list[dict[str, Any]] = []
    for number, group in enumerate(_children(containers[0], MEASUREMENT_GROUP), 1):
        where = f"measurement group {number}"
        scoords = [c for c in group.get("ContentSequence", []) if c.get("ValueType") == "SCOORD3D"]
        if not scoords:
            continue  # TID 1501 groups (measurements without a region) carry no geometry
        if len(scoords) > 1:
            raise DatasetDoesNotMatchSOPClass(f"{where}: more than one SCOORD3D region")
        region = scoords[0]
        graphic = str(region.get("GraphicType", ""))
        points = _points(region, graphic, where)
        frame = region.get("ReferencedFrameOfReferenceUID")
        if not frame:
            raise DatasetDoesNotMatchSOPClass(f"{where}: SCOORD3D without ReferencedFrameOfReferenceUID")
        findings = _children(group, FINDING)
        tracking = _children(group, TRACKING_UID)
        found.append({
            "number": number,
            "tracking_uid": str(tracking[0].get("UID", "")) if tracking else None,
            "finding": _code_value(findings[0]) if findings else (None, None, None),
            "graphic_type": graphic, "points": points, "frame_of_reference": str(frame),
            "measurements": [str(c.ConceptNameCodeSequence[0].get("CodeMeaning", ""))
                             for c in group.get("ContentSequence", [])
                             if c.get("ValueType") == "NUM" and c.get("ConceptNameCodeSequence")],
        })
        if len(found) > MAX_ROIS:
            raise DatasetDoesNotMatchSOPClass(f"more than {MAX_ROIS} regions in one report")
    return found


def _points(region: Dataset, graphic: str, where: str) -> np.ndarray:
    values = region.get("GraphicData")
    if values is None:
        raise DatasetDoesNotMatchSOPClass(f"{where}: SCOORD3D without GraphicData")
    try:
        data = np.asarray([float(v) for v in (values if hasattr(values, "__iter__") else [values])], dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetDoesNotMatchSOPClass(f"{where}: GraphicData is not numeric") from None
    if len(data) % 3 or not np.all(np.isfinite(data)):
        raise DatasetDoesNotMatchSOPClass(f"{where}: GraphicData is not a list of finite (x, y, z) triplets")
    points = data.reshape(-1, 3)
    if graphic in _FIXED_POINTS:
        if len(points) != _FIXED_POINTS[graphic]:
            raise DatasetDoesNotMatchSOPClass(
                f"{where}: {graphic} needs {_FIXED_POINTS[graphic]} points, has {len(points)}")
    elif graphic in _MIN_POINTS:
        if len(points) < _MIN_POINTS[graphic]:
            raise DatasetDoesNotMatchSOPClass(
                f"{where}: {graphic} needs at least {_MIN_POINTS[graphic]} points, has {len(points)}")
        if graphic == "POLYGON" and not np.array_equal(points[0], points[-1]):
            raise DatasetDoesNotMatchSOPClass(f"{where}: POLYGON must end with its first point")
    else:
        raise DatasetDoesNotMatchSOPClass(f"{where}: unknown SCOORD3D GraphicType")
    return points


def check(ds: Dataset) -> list[dict[str, Any]]:
    """The report's regions if its structure is sound (at least one region); raises otherwise."""
    if not ds.get("ContentSequence"):
        raise DatasetDoesNotMatchSOPClass("measurement report has no ContentSequence")
    found = regions(ds)
    if not found:
        raise DatasetDoesNotMatchSOPClass("measurement report has no region of interest (SCOORD3D)")
    return found


def evidence(ds: Dataset) -> list[tuple[str | None, str]]:
    """(series UID, SOP Instance UID) of the images named as evidence."""
    out = []
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(keyword, []):
            for series in study.get("ReferencedSeriesSequence", []):
                for inst in series.get("ReferencedSOPSequence", []):
                    sop = inst.get("ReferencedSOPInstanceUID")
                    if sop:
                        out.append((str(series.get("SeriesInstanceUID") or "") or None, str(sop)))
    return out


def observer_name(ds: Dataset) -> str | None:
    """The person observer's name from the observation context (TID 1002), if any."""
    for item in ds.get("ContentSequence", []):
        if _concept(item) == PERSON_OBSERVER_NAME and item.get("PersonName"):
            return str(item.PersonName)
    return None


def groups(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group rows for the results tables: one per (finding, graphic type), counting regions."""
    by_key: dict[tuple, dict[str, Any]] = {}
    for roi in found:
        code, scheme, meaning = roi["finding"]
        key = (code, scheme, roi["graphic_type"])
        row = by_key.get(key)
        if row is None:
            row = by_key[key] = {
                "number": len(by_key) + 1, "label": meaning or code or "Unclassified",
                "graphic_type": roi["graphic_type"], "annotation_count": 0,
                "property_type_code": code, "property_type_scheme": scheme, "property_type_meaning": meaning,
                "property_category_meaning": None, "algorithm_type": "MANUAL",
                "algorithm_name": None, "algorithm_version": None, "algorithm_family": None,
                "measurements": [],
            }
        row["annotation_count"] += 1
        for name in roi["measurements"]:
            if name not in row["measurements"]:
                row["measurements"].append(name)
    return list(by_key.values())


# --- slide coordinates -> level-0 pixels -------------------------------------------------


def pixel_transform(slide_header: Dataset):
    """A function mapping (N, 2) slide coordinates (mm) to (column, row) of the slide level's
    total pixel matrix, (0, 0) the top-left corner: dicom-microscopy-viewer's inverse affine."""
    orientation = [float(v) for v in slide_header.ImageOrientationSlide]
    spacing = [float(v) for v in slide_header.SharedFunctionalGroupsSequence[0]
               .PixelMeasuresSequence[0].PixelSpacing]
    origin = slide_header.TotalPixelMatrixOriginSequence[0]
    offset = np.array([float(origin.XOffsetInSlideCoordinateSystem), float(origin.YOffsetInSlideCoordinateSystem)])
    forward = np.array([[orientation[0] * spacing[1], orientation[3] * spacing[0]],
                        [orientation[1] * spacing[1], orientation[4] * spacing[0]]])
    inverse = np.linalg.inv(forward)

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        return (xy - offset) @ inverse.T + 0.5

    return to_pixels


_GEOJSON = {"POINT": "Point", "MULTIPOINT": "MultiPoint", "POLYLINE": "LineString", "POLYGON": "Polygon",
            "ELLIPSE": "LineString", "ELLIPSOID": "LineString"}


def iter_features(ds: Dataset, slide_header: Dataset) -> Iterator[dict[str, Any]]:
    """The report's regions as GeoJSON Features in the slide level's pixel coordinates."""
    to_pixels = pixel_transform(slide_header)
    labels = {(g["property_type_code"], g["property_type_scheme"], g["graphic_type"]): g["number"]
              for g in groups(regions(ds))}
    for roi in regions(ds):
        xy = to_pixels(roi["points"][:, :2]).tolist()
        kind = _GEOJSON[roi["graphic_type"]]
        coordinates: Any = xy[0] if kind == "Point" else ([xy] if kind == "Polygon" else xy)
        code, scheme, meaning = roi["finding"]
        yield {"type": "Feature", "geometry": {"type": kind, "coordinates": coordinates},
               "properties": {"classification": {"name": meaning or code or "Unclassified"},
                              "objectType": "annotation",
                              "dicom": {"instance": str(ds.SOPInstanceUID),
                                        "group": labels[(code, scheme, roi["graphic_type"])],
                                        "graphicType": roi["graphic_type"],
                                        "trackingUID": roi["tracking_uid"]}}}
