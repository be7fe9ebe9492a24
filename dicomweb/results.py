"""The AI-results JSON API: find results by slide or algorithm, post GeoJSON and masks, get GeoJSON back.

Everything posted here is turned into DICOM (highdicom) and stored through the
one ingest path, so it is checked, linked and served by WADO-RS like any
result sent by STOW-RS or C-STORE. See docs/results.md.
"""
from __future__ import annotations

import contextlib
import gc
import json
import threading
from typing import Any

from flask import Blueprint, Flask, Response, request, stream_with_context
from pydicom.filewriter import dcmwrite

from archive.auth.access import requires
from archive.errors import ArchiveError, InvalidRequest, NotFound, UnsupportedMediaType
from archive.metrics import error as count_error
from archive.results import annotations
from archive.results import geojson_stream
from archive.results import measurement_reports
from archive.results import links as result_links
from archive.results import segmentations
from archive.results import slide_levels
from archive.results.checks import ANN_CLASS
from archive.uids import check_uid

from . import archive, audit, principal, resource_url
from .auth import alert_if_hidden
from .stow import target_origin

try:  # optional: ten times faster float formatting, same shortest round-trip repr as json
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None

bp = Blueprint("results", __name__)
MAX_LIMIT = 1000
STREAM_BATCH = 2000


_gc_lock = threading.Lock()
_gc_paused = 0


@contextlib.contextmanager
def _gc_paused_while_parsing():
    """Pause the cyclic GC while a big JSON body becomes millions of objects.

    None of them is garbage yet, yet each automatic collection walks them all: at
    100,000 cells this halves the parse time. Counted, so overlapping requests in
    other threads leave it off until the last one is done; refcounting still frees.
    """
    global _gc_paused
    with _gc_lock:
        _gc_paused += 1
        gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_paused -= 1
            if _gc_paused == 0:
                gc.enable()


def register(app: Flask) -> None:
    app.register_blueprint(bp, url_prefix="/api")


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), status=status, content_type="application/json")


def _flag(name: str) -> bool:
    return request.args.get(name, "").lower() in ("1", "true", "yes")


def _int_arg(name: str, default: int | None, low: int = 0, high: int | None = None) -> int | None:
    value = request.args.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer") from None
    if number < low or (high is not None and number > high):
        raise InvalidRequest(f"{name} must be {low}-{high}" if high is not None else f"{name} must be at least {low}")
    return number


def _dump_features(batch: list[dict[str, Any]]) -> str:
    """A batch of Features as JSON without the enclosing brackets."""
    if orjson is not None:
        return orjson.dumps(batch, option=orjson.OPT_SERIALIZE_NUMPY).decode()[1:-1]
    return json.dumps(batch, separators=(",", ":"))[1:-1]


def _with_urls(result: dict[str, Any]) -> dict[str, Any]:
    result["url"] = resource_url(result["study"], result["series"], result["sop_instance"])
    return result


# --- find ---------------------------------------------------------------------------------


@bp.get("/slides/<series>/results")
@requires("read")
def slide_results(series: str):
    _readable_slide(series)
    found = result_links.results_for_slide(archive().catalog, series, current_only=_flag("current"),
                                           principal=principal())
    audit("Query", series=series, query=request.args.to_dict(flat=False),
          detail={"description": f"results of a slide, {len(found)} found"})
    return _json({"series": series, "results": [_with_urls(r) for r in found]})


@bp.get("/results")
@requires("read")
def find_results():
    kind = request.args.get("kind")
    if kind and kind.upper() not in ("ANN", "SEG", "SR"):
        raise InvalidRequest("kind must be ANN, SEG or SR")
    slides = result_links.find_slides(
        archive().catalog, algorithm=request.args.get("algorithm") or None,
        version=request.args.get("version") or None, property_type=request.args.get("property_type") or None,
        min_count=_int_arg("min_count", None), kind=kind, include_superseded=_flag("include_superseded"),
        limit=_int_arg("limit", 100, 1, MAX_LIMIT), offset=_int_arg("offset", 0), principal=principal())
    for slide in slides:
        slide["results"] = [_with_urls(r) for r in slide["results"]]
    audit("Query", query=request.args.to_dict(flat=False), detail={"description": f"results, {len(slides)} slides"})
    return _json({"slides": slides})


# --- store ----------------------------------------------------------------------------------


def _readable_slide(series: str) -> None:
    """404 unless the slide exists and the caller may read it (existence must not leak)."""
    check_uid(series, "SeriesInstanceUID")
    if archive().catalog.series_study(series, principal=principal()) is None:
        raise NotFound("no such slide")
    slide_levels.levels(archive(), series)  # 404 for a series that is no slide


def _store(series: str, made: list) -> Response:
    """Write the data set in ``made`` (a one-item list, emptied: the object is freed before ingest
    reads the file back, which halves the peak at 100,000 cells) and store it through ingest,
    as a derived object of the slide.

    It goes to ``?collection=`` or the slide's collection, which the caller must be able to write."""
    store = archive()
    asked = request.args.get("collection") or store.catalog.series_collection(series) or "default"
    origin = target_origin("derived", asked)
    temp = store.storage.new_temp()
    try:
        dcmwrite(temp, made.pop(), enforce_file_format=True)
        result = store.store_file(temp, origin, owned=True)
    finally:
        temp.unlink(missing_ok=True)
    body = {"status": result.status, "study": result.study_uid, "series": result.series_uid,
            "sop_instance": result.sop_instance_uid, "sop_class": result.sop_class_uid,
            "url": resource_url(result.study_uid, result.series_uid, result.sop_instance_uid)}
    if result.warning is not None:
        body["warning"] = {"status": result.warning, "message": result.message}
    if result.status == "stored":
        audit("DICOMInstancesTransferred", study=result.study_uid, series=result.series_uid,
              instances=[(result.sop_class_uid, result.sop_instance_uid)], detail={"action": "C"})
    return _json(body, 201)


def _annotation_request() -> tuple[annotations.FeatureReader, annotations.Creator, dict, Any]:
    """(features, creator, classes, category) from a JSON envelope or a bare GeoJSON body + query params.

    The body is read incrementally (archive.results.geojson_stream): features are checked and
    packed as they arrive, so memory does not grow with the Python objects of the whole body.
    """
    ctype = (request.mimetype or "").lower()
    if ctype not in ("application/json", "application/geo+json"):
        raise UnsupportedMediaType("send application/json ({\"geojson\": ..., \"algorithm\": ...}) "
                                   "or application/geo+json with query parameters")
    enveloped, bare = annotations.FeatureReader(), annotations.FeatureReader()

    def take(path: tuple[str, ...], feature: Any) -> None:
        (enveloped if path[:1] == ("geojson",) else bare).add(feature)

    try:
        body = geojson_stream.read(request.stream, take)
    except geojson_stream.NotJSON:
        raise InvalidRequest("body is not valid JSON") from None
    args = request.args
    if isinstance(body, dict) and "geojson" in body:
        env, reader = body, enveloped
    else:
        env, reader = {"geojson": body}, bare
        if args.get("algorithm"):
            env["algorithm"] = {"name": args["algorithm"], "version": args.get("version", ""),
                                "family": args.get("family", "Artificial Intelligence")}
        env["annotator"] = args.get("annotator")
        env["description"] = args.get("description")
    annotations.check_geojson(env["geojson"], reader)
    if env.get("algorithm") is None and not env.get("annotator"):
        raise InvalidRequest("name an algorithm ({name, version[, family]}) or an annotator")
    classes = env.get("classes") or {}
    if not isinstance(classes, dict):
        raise InvalidRequest("classes must map a classification name to a code")
    creator = annotations.Creator(env.get("algorithm"), env.get("annotator"), env.get("description"))
    return reader, creator, classes, env.get("category")


@bp.post("/slides/<series>/annotations")
@requires("write")
def post_annotations(series: str):
    _readable_slide(series)
    _, header, cols, rows = slide_levels.level(archive(), series, 0)
    with _gc_paused_while_parsing():
        reader, creator, classes, category = _annotation_request()
        groups = reader.finish(cols, rows)
        del reader
    made = [annotations.build(header, groups, creator, classes, category)]
    del groups
    return _store(series, made)


@bp.get("/slides/<series>/annotations")
@requires("read")
def get_annotations(series: str):
    _readable_slide(series)
    wanted = request.args.get("instance")
    found = [r for r in result_links.results_for_slide(archive().catalog, series, current_only=not _flag("all"),
                                                       principal=principal())
             if r["sop_class"] in (ANN_CLASS, measurement_reports.SR_CLASS)
             and (not wanted or r["sop_instance"] == wanted)]
    if wanted and not found:
        raise NotFound("no such annotation instance on this slide")
    store = archive()
    records = [store.locate(r["study"], r["series"], r["sop_instance"], principal()) for r in found]
    for study in {r.study_uid for r in records}:
        audit("DICOMInstancesAccessed", study=study,
              instances=[(r.sop_class_uid, r.sop_instance_uid) for r in records if r.study_uid == study])
    slide_header = None
    if any(r.sop_class_uid == measurement_reports.SR_CLASS for r in records):  # regions are in slide coordinates
        slide_header = store.header(slide_levels.level(store, series, 0)[0])
    instances = [{"sop_instance": r["sop_instance"], "algorithm": r["algorithm"], "current": r["current"],
                  "url": resource_url(r["study"], r["series"], r["sop_instance"])} for r in found]

    def body():
        """Streamed in batches: a 100,000-cell result never sits in memory as one JSON string."""
        yield '{"type":"FeatureCollection","instances":' + json.dumps(instances, separators=(",", ":"))
        yield ',"features":['
        first = True
        for record in records:
            batch: list[dict[str, Any]] = []
            header = store.header(record)
            if record.sop_class_uid == measurement_reports.SR_CLASS:
                features = measurement_reports.iter_features(header, slide_header)
            else:
                features = annotations.iter_features(header, arrays=orjson is not None)
            for feature in features:
                batch.append(feature)
                if len(batch) == STREAM_BATCH:
                    yield ("" if first else ",") + _dump_features(batch)
                    first, batch = False, []
            if batch:
                yield ("" if first else ",") + _dump_features(batch)
                first = False
        yield "]}"

    return Response(stream_with_context(body()), content_type="application/geo+json")


@bp.post("/slides/<series>/segmentations")
@requires("write")
def post_segmentation(series: str):
    _readable_slide(series)
    upload = request.files.get("mask")
    if upload is None:
        raise InvalidRequest("send multipart/form-data with a 'mask' PNG file and a 'metadata' JSON field")
    try:
        meta = json.loads(request.form.get("metadata") or "{}")
    except ValueError:
        raise InvalidRequest("metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise InvalidRequest("metadata must be a JSON object")
    try:
        number = int(meta.get("level", 0))
        tile = int(meta["tile"]) if meta.get("tile") is not None else None
    except (TypeError, ValueError):
        raise InvalidRequest("level and tile must be integers") from None
    _, header, _, _ = slide_levels.level(archive(), series, number)
    mask = segmentations.read_mask(upload.read())
    made = [segmentations.build(header, mask, meta.get("segments"), meta.get("type", "BINARY"),
                                meta.get("algorithm"), str(meta.get("tiling", "sparse")), tile)]
    del mask
    return _store(series, made)


@bp.errorhandler(ArchiveError)
def _archive_error(e: ArchiveError):
    count_error(e, "http")
    alert_if_hidden(e)
    return _json({"status": e.http_status, "error": e.title, "message": e.message}, e.http_status)
