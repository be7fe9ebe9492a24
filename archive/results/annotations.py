"""GeoJSON (as QuPath exports it) to a DICOM Microscopy Bulk Simple Annotations object, and back.

Coordinates are level-0 pixel coordinates of the slide's total pixel matrix,
x = column, y = row, (0, 0) the top-left corner of the top-left pixel - the
convention QuPath and DICOM 2D annotations share, so nothing is converted.
They are stored as float64 (Double Point Coordinates Data), so every JSON
number comes back exactly. Measurements are float32 in DICOM (Floating Point
Values) and come back rounded to float32.

Features are grouped into annotation groups by (classification, geometry kind):
Point and MultiPoint -> POINT, LineString -> POLYLINE, Polygon -> POLYGON (the
GeoJSON closing point is dropped and re-added on the way back). Polygons with
holes, MultiLineString, MultiPolygon and GeometryCollection are refused.
"""
from __future__ import annotations

import array
import contextlib
import dataclasses
import math
import warnings
from typing import Any, Iterator

import numpy as np
from pydicom.dataset import Dataset

from archive.errors import InvalidRequest
from archive.results import codes as result_codes

MAX_FEATURES = 2_000_000
_KINDS = {"Point": "POINT", "MultiPoint": "POINT", "LineString": "POLYLINE", "Polygon": "POLYGON"}
_MIN_POINTS = {"POLYLINE": 2, "POLYGON": 3}
UNCLASSIFIED = "Unclassified"
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
          "StudyDate", "StudyTime", "ReferringPhysicianName")


@dataclasses.dataclass
class Group:
    """One future annotation group: features of one class and graphic type, in input order.

    Positions are appended to one flat float64 array as features arrive (``coords``, with
    each shape's point count in ``lengths``), so a 100,000-cell upload never exists as
    Python lists of numbers; :func:`_finish` checks and splits them all at once.
    """

    label: str
    graphic_type: str
    shapes: list[np.ndarray] = dataclasses.field(default_factory=list)
    #: measurement name -> one value per shape (NaN where a feature has none), in shape order
    measurements: dict[str, array.array] = dataclasses.field(default_factory=dict)
    coords: array.array = dataclasses.field(default_factory=lambda: array.array("d"))
    lengths: array.array = dataclasses.field(default_factory=lambda: array.array("q"))
    feature_of: array.array = dataclasses.field(default_factory=lambda: array.array("q"))


# --- GeoJSON in ---------------------------------------------------------------------------


def _features(obj: Any) -> list[Any]:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict) and obj.get("type") == "FeatureCollection" and isinstance(obj.get("features"), list):
        return obj["features"]
    if isinstance(obj, dict) and obj.get("type") == "Feature":
        return [obj]
    raise InvalidRequest("geojson must be a FeatureCollection, a Feature or a list of Features")


def _classification(props: dict[str, Any]) -> str:
    value = props.get("classification")
    if isinstance(value, dict):
        value = value.get("name")
    if value is None:
        return UNCLASSIFIED
    return result_codes.text(value, "classification name")


def _measurements(props: dict[str, Any], where: str) -> dict[str, float]:
    value = props.get("measurements")
    if value is None:
        return {}
    if isinstance(value, list):  # older QuPath: [{"name": ..., "value": ...}]
        try:
            value = {m["name"]: m["value"] for m in value}
        except (TypeError, KeyError):
            raise InvalidRequest(f"{where}: measurements list items need name and value") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}: measurements must be an object of name: number")
    out = {}
    for name, number in value.items():
        if number is None:
            continue
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise InvalidRequest(f"{where}: measurement values must be numbers")
        out[result_codes.text(name, "measurement name")] = float(number)
    return out


_NOT_PAIRS = "coordinates must be [x, y] pairs of numbers (2D, level-0 pixels)"


def _append(group: Group, positions: Any, feature: int, where: str) -> None:
    """Add one shape's positions to the group's flat float64 array (exact: a JSON number is one double)."""
    if not isinstance(positions, list):
        raise InvalidRequest(f"{where}: {_NOT_PAIRS}")
    flat = []
    for p in positions:
        if type(p) is not list or len(p) != 2 or type(p[0]) not in (int, float) or type(p[1]) not in (int, float):
            raise InvalidRequest(f"{where}: {_NOT_PAIRS}")
        flat += p
    try:
        group.coords.extend(flat)
    except OverflowError:
        raise InvalidRequest(f"{where}: coordinates must be finite numbers") from None
    group.lengths.append(len(positions))
    group.feature_of.append(feature)


def _raw_shapes(geometry: Any, where: str) -> tuple[str, list[Any]]:
    """(graphic type, positions of each shape) with the structural checks that need no numbers."""
    if not isinstance(geometry, dict) or "type" not in geometry or "coordinates" not in geometry:
        raise InvalidRequest(f"{where}: geometry must be an object with type and coordinates")
    kind = geometry["type"]
    if kind not in _KINDS:
        raise InvalidRequest(f"{where}: geometry type {str(kind)[:32]} is not supported "
                             "(Point, MultiPoint, LineString, Polygon without holes)")
    coords = geometry["coordinates"]
    if kind == "Point":
        return "POINT", [[coords]]
    if not isinstance(coords, list) or not coords:
        raise InvalidRequest(f"{where}: coordinates must be a non-empty array")
    if kind == "MultiPoint":
        return "POINT", [[p] for p in coords]
    if kind == "LineString":
        if len(coords) < 2:
            raise InvalidRequest(f"{where}: a LineString needs at least 2 positions")
        return "POLYLINE", [coords]
    if len(coords) != 1:
        raise InvalidRequest(f"{where}: polygons must have exactly one ring (holes are not supported)")
    if not isinstance(coords[0], list) or len(coords[0]) < 4:
        raise InvalidRequest(f"{where}: a Polygon ring must be closed and have at least 4 positions")
    return "POLYGON", [coords[0]]


def _finish(group: Group, width: int, height: int) -> None:
    """Check the group's positions at once, and split them into shapes."""
    lengths = np.frombuffer(group.lengths, dtype=np.int64)
    arr = np.frombuffer(group.coords, dtype=np.float64).reshape(-1, 2)
    ends = np.cumsum(lengths)
    starts = ends - lengths

    def fail(bad: np.ndarray, message: str) -> None:
        if bad.any():
            raise InvalidRequest(f"feature {group.feature_of[int(np.flatnonzero(bad)[0])]}: {message}")

    finite = np.isfinite(arr).all(axis=1)
    fail(np.logical_and.reduceat(finite, starts) == 0, "coordinates must be finite numbers")
    if group.graphic_type == "POLYGON":
        fail(np.any(arr[starts] != arr[ends - 1], axis=1), "a Polygon ring must be closed and have at least 4 positions")
        keep = np.ones(len(arr), dtype=bool)
        keep[ends - 1] = False
        arr, lengths = arr[keep], lengths - 1
        ends = np.cumsum(lengths)
        starts = ends - lengths
        fail(np.all(arr[starts] == arr[ends - 1], axis=1), "a Polygon ring repeats its first position before closing")
    low, high = arr.min(axis=0), arr.max(axis=0)
    if low[0] < 0 or low[1] < 0 or high[0] > width or high[1] > height:
        raise InvalidRequest(f"coordinates of class {group.label} lie outside the slide "
                             f"(level 0 is {width} x {height} pixels)")
    # shapes are views of arr (for polygons a copy without the closing points): the flat array
    # is dropped here, so only one copy of the coordinates is alive while highdicom builds
    group.coords, group.lengths, group.feature_of = array.array("d"), array.array("q"), array.array("q")
    group.shapes = np.split(arr, ends[:-1])


class FeatureReader:
    """Features checked and grouped one at a time, as a streaming parser hands them over."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], Group] = {}
        self.count = 0

    def add(self, feature: Any) -> None:
        i = self.count
        self.count += 1
        if self.count > MAX_FEATURES:
            raise InvalidRequest(f"at most {MAX_FEATURES} features per request")
        where = f"feature {i}"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise InvalidRequest(f"{where}: not a GeoJSON Feature")
        props = feature.get("properties") or {}
        if not isinstance(props, dict):
            raise InvalidRequest(f"{where}: properties must be an object")
        graphic, shapes = _raw_shapes(feature.get("geometry"), where)
        label = _classification(props)
        measured = _measurements(props, where)
        group = self.groups.get((label, graphic))
        if group is None:
            group = self.groups[(label, graphic)] = Group(label, graphic)
        before = len(group.lengths)
        for positions in shapes:
            _append(group, positions, i, where)
        for name, value in measured.items():
            column = group.measurements.get(name)
            if column is None:
                column = group.measurements[name] = array.array("d", [math.nan]) * before
            column.extend([value] * len(shapes))
        for column in group.measurements.values():
            if len(column) < len(group.lengths):
                column.extend([math.nan] * (len(group.lengths) - len(column)))

    def finish(self, width: int, height: int) -> list[Group]:
        """The groups; every coordinate must lie within [0, width] x [0, height]."""
        if not self.count:
            raise InvalidRequest("geojson has no features")
        groups, self.groups = list(self.groups.values()), {}
        for group in groups:
            _finish(group, width, height)
        return groups


def check_geojson(obj: Any, reader: FeatureReader) -> None:
    """``obj`` with its feature arrays already streamed into ``reader``: a single Feature is added now."""
    if isinstance(obj, dict) and obj.get("type") == "Feature":
        reader.add(obj)
    elif not isinstance(obj, list) and not (isinstance(obj, dict) and obj.get("type") == "FeatureCollection"
                                            and isinstance(obj.get("features"), list)):
        raise InvalidRequest("geojson must be a FeatureCollection, a Feature or a list of Features")


def parse_geojson(obj: Any, width: int, height: int) -> list[Group]:
    """Validate the features of a parsed GeoJSON object and group them (see FeatureReader)."""
    reader = FeatureReader()
    for feature in _features(obj):
        reader.add(feature)
    return reader.finish(width, height)


# --- DICOM out ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Creator:
    """Who made the annotations: an algorithm ({"name","version","family"}) or a person."""

    algorithm: dict[str, Any] | None = None
    annotator: str | None = None
    description: str | None = None


def _measurement_objects(group: Group):
    from highdicom.ann import Measurements
    from highdicom.sr import CodedConcept

    names = sorted(group.measurements)
    unit = CodedConcept("1", "UCUM", "no units")
    out = []
    for name in names:
        values = np.asarray(group.measurements[name], dtype=np.float32)
        out.append(Measurements(name=result_codes.coded(name, "measurement name"), values=values, unit=unit))
    return out


@contextlib.contextmanager
def pseudonymous_names_accepted(source: Dataset) -> Iterator[None]:
    """highdicom warns for every one-component person name it copies from the source image.

    The slide's own names are pseudonyms ("DEID-...", one component by design), not mistakes:
    that warning is dropped for them, and every other warning is passed on unchanged.
    """
    names = {str(e.value) for e in source if e.VR == "PN" and e.VM == 1 and e.value}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        text = str(w.message)
        if "is unlikely to represent the intended person name" in text and any(f'"{n}"' in text for n in names):
            continue
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _source(slide_header: Dataset) -> Dataset:
    """A copy of the slide's header with the Type 2 attributes highdicom copies present (maybe empty)."""
    src = Dataset(slide_header)
    for keyword in _TYPE2:
        if keyword not in src:
            setattr(src, keyword, None)
    return src


def build(slide_header: Dataset, groups: list[Group], creator: Creator, classes: dict[str, Any] | None = None,
          category: Any = None, series_number: int = 900) -> Dataset:
    """A highdicom MicroscopyBulkSimpleAnnotations instance for the level-0 image ``slide_header``."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    classes = classes or {}
    algorithm = result_codes.algorithm(creator.algorithm)
    generation = "AUTOMATIC" if algorithm is not None else "MANUAL"
    category_code = result_codes.coded(category or result_codes.DEFAULT_CATEGORY, "category")
    hd_groups = []
    for number, group in enumerate(groups, 1):
        minimum = _MIN_POINTS.get(group.graphic_type, 1)
        if any(len(s) < minimum for s in group.shapes):
            raise InvalidRequest(f"class {group.label}: {group.graphic_type} needs at least {minimum} points")
        try:
            hd_groups.append(hd.ann.AnnotationGroup(
                number=number, uid=generate_uid(), label=group.label,
                annotated_property_category=category_code,
                annotated_property_type=result_codes.coded(classes.get(group.label, group.label), "class"),
                graphic_type=group.graphic_type, graphic_data=group.shapes, algorithm_type=generation,
                algorithm_identification=algorithm, measurements=_measurement_objects(group) or None))
        except ValueError as e:
            raise InvalidRequest(f"class {group.label}: {str(e).splitlines()[0][:200]}") from None
    annotator = result_codes.text(creator.annotator, "annotator") if creator.annotator else None
    description = result_codes.text(creator.description, "description") if creator.description else None
    source = _source(slide_header)
    with pseudonymous_names_accepted(source):
        return _annotations(hd, source, hd_groups, series_number, description, annotator)


def _annotations(hd, source: Dataset, hd_groups: list, series_number: int, description: str | None,
                 annotator: str | None) -> Dataset:
    from pydicom.uid import generate_uid

    return hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=[source], annotation_coordinate_type="2D", annotation_groups=hd_groups,
        series_instance_uid=generate_uid(), series_number=series_number, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="slidearchive", manufacturer_model_name="slidearchive results API",
        software_versions="1", device_serial_number="1", content_description=description,
        content_creator_name=annotator, content_label="ANNOTATIONS")


# --- GeoJSON out --------------------------------------------------------------------------


def _integral(arr: np.ndarray) -> bool:
    """True when every coordinate is a whole number: such groups come back as JSON ints (100, not 100.0)."""
    return bool(arr.size) and bool(np.all(arr == np.floor(arr))) and bool(np.all(np.abs(arr) < 2**53))


_GEOMETRY = {"POINT": "Point", "POLYLINE": "LineString", "POLYGON": "Polygon"}
_CHUNK = 2000  # annotations converted to Python objects at a time: keeps the live set (and GC work) small


def iter_features(ds: Dataset, arrays: bool = False) -> Iterator[dict[str, Any]]:
    """GeoJSON Features of a stored 2D annotation instance, group by group, in stored order.

    3D instances have no pixel coordinates and yield nothing. RECTANGLE and
    ELLIPSE groups (from other writers) come out as their four points, as a LineString.
    ``arrays``: coordinates as numpy arrays (for a serializer that writes them
    directly, e.g. orjson), not nested lists - building those lists is most of the cost.
    """
    import highdicom as hd

    ann = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(ds, copy=False)
    if ann.annotation_coordinate_type.value != "2D":
        return
    sop = str(ds.SOPInstanceUID)
    for group in ann.get_annotation_groups():
        shapes = group.get_graphic_data("2D")
        if not shapes:
            continue
        kind = group.graphic_type.value
        points = np.concatenate(shapes)
        if _integral(points):
            points = points.astype(np.int64)
        ends = np.cumsum([len(x) for x in shapes]).tolist()
        names, values, _ = group.get_measurements()
        meanings = [n.meaning for n in names]
        label, number = group.label, group.number
        geometry_type = _GEOMETRY.get(kind, "LineString")
        for a in range(0, len(shapes), _CHUNK):
            b = min(a + _CHUNK, len(shapes))
            base = ends[a - 1] if a else 0
            flat = points[base:ends[b - 1]]
            if not arrays:
                flat = flat.tolist()
            rows = values[a:b].tolist() if meanings else None
            start = 0
            for i in range(a, b):
                stop = ends[i] - base
                coords = flat[start:stop]
                start = stop
                if kind == "POINT":
                    geometry = {"type": "Point", "coordinates": coords[0]}
                elif kind == "POLYGON":
                    if arrays:
                        coords = np.concatenate([coords, coords[:1]])
                    else:
                        coords.append(coords[0])
                    geometry = {"type": "Polygon", "coordinates": [coords]}
                else:
                    geometry = {"type": geometry_type, "coordinates": coords}
                props: dict[str, Any] = {"objectType": "annotation", "classification": {"name": label},
                                         "dicom": {"instance": sop, "group": number, "graphicType": kind}}
                if rows is not None:
                    props["measurements"] = {n: v for n, v in zip(meanings, rows[i - a]) if not math.isnan(v)}
                yield {"type": "Feature", "geometry": geometry, "properties": props}


def to_features(ds: Dataset) -> list[dict[str, Any]]:
    return list(iter_features(ds))
