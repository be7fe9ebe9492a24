"""The slide page, the compare page, and the slide summary they read.

The pages are shells (public, like any static file): the browser may hold the only
credentials (a bearer token in ``web/static/auth.js``), so everything about a slide
is fetched by the page's JavaScript with that token: ``GET /api/slides/{series}``
below (what the side panel shows), WADO-RS metadata and frames (what
dicom-microscopy-viewer draws) and the results API (the overlays).
"""
from __future__ import annotations

import json
import tarfile
import time
from typing import Any

from flask import Blueprint, Flask, Response, render_template, request, stream_with_context
from pydicom.dataset import Dataset

from archive.auth.access import requires
from archive.errors import ArchiveError, InvalidRequest, NotFound
from archive.results import slide_levels
from archive.uids import check_uid
from dicomweb import archive, audit, principal, resource_url
from indexer.documents import build_document

pages = Blueprint("slide_pages", __name__, template_folder="templates")
api = Blueprint("slide_api", __name__)
MAX_COMPARE = 4
CHUNK = 1 << 20


def register(app: Flask) -> None:
    app.register_blueprint(pages)
    app.register_blueprint(api, url_prefix="/api")


# --- pages ----------------------------------------------------------------------------------


@pages.get("/slides/<series>")
@requires("public")
def slide_page(series: str):
    try:
        check_uid(series, "SeriesInstanceUID")
    except ArchiveError as e:
        return render_template("slide.html", series=None, error=e.message), 400
    return render_template("slide.html", series=series, error=None)


@pages.get("/compare")
@requires("public")
def compare_page():
    series = request.args.getlist("series")
    error = None
    if not 2 <= len(series) <= MAX_COMPARE:
        error = f"compare needs 2 to {MAX_COMPARE} slides: /compare?series=A&series=B"
    else:
        for uid in series:
            try:
                check_uid(uid, "SeriesInstanceUID")
            except ArchiveError as e:
                error = e.message
    if error:
        return render_template("compare.html", series=[], error=error), 400
    return render_template("compare.html", series=series, error=None)


# --- the summary the slide page shows -----------------------------------------------------------


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), status=status, content_type="application/json")


def _level_row(record, cols: int, rows: int, header: Dataset | None) -> dict[str, Any]:
    """One pyramid level; pixel spacing only from a header already read (level 0)."""
    row: dict[str, Any] = {"sop_instance": record.sop_instance_uid, "columns": cols, "rows": rows}
    if header is not None:
        spacing = None
        try:
            spacing = [float(v) for v in header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
        except (AttributeError, IndexError, TypeError):
            pass
        row["pixel_spacing_mm"] = spacing
    row.update({"tile": [record.columns, record.rows], "frames": record.number_of_frames,
                "transfer_syntax": record.transfer_syntax_uid})
    return row


def summary(series: str) -> dict[str, Any]:
    """Specimen, stain, scanner and pyramid of a slide series the caller may read (404 otherwise)."""
    check_uid(series, "SeriesInstanceUID")
    store = archive()
    study = store.catalog.series_study(series, principal=principal())
    if study is None:
        raise NotFound("no such slide: the series is not in the archive (or not yours to read)")
    found = slide_levels.levels(store, series)
    headers = [store.header(found[0][0])]
    levels = [_level_row(found[0][0], found[0][1], found[0][2], headers[0])]
    for record, cols, rows in found[1:]:
        levels.append(_level_row(record, cols, rows, None))
    doc = build_document(headers)
    specimen = doc.get("specimen", {})
    scanner = doc.get("scanner", {})
    url = resource_url(study, series)
    return {
        "study": study, "series": series,
        "description": doc.get("series", {}).get("description"),
        "specimen": {"ids": specimen.get("ids", []), "anatomy": specimen.get("anatomy"),
                     "stains": specimen.get("stains"), "preparation": specimen.get("preparation"),
                     "container_id": specimen.get("container_id"), "description": specimen.get("description")},
        "scanner": {"manufacturer": scanner.get("manufacturer"), "model": scanner.get("model"),
                    "software_versions": scanner.get("software_versions", [])},
        "magnification": doc.get("magnification"), "pixel_spacing_um": doc.get("pixel_spacing_um"),
        "levels": levels,
        "frame_of_reference": str(headers[0].get("FrameOfReferenceUID") or "") or None,
        "dicomweb": url,
        "downloads": {"series": url, "thumbnail": f"{url}/thumbnail"},
    }


@api.get("/slides/<series>")
@requires("read")
def slide_summary(series: str):
    found = summary(series)
    audit("Query", series=series, detail={"description": "slide summary"})
    return _json(found)


@api.get("/download/<study>/<series>")
@requires("read")
def download_series(study: str, series: str):
    """The series' stored DICOM files as one uncompressed tar (streamed; a browser link cannot send
    the Accept header WADO-RS needs, and a user wants .dcm files, not multipart/related)."""
    check_uid(study, "StudyInstanceUID")
    check_uid(series, "SeriesInstanceUID")
    store = archive()
    records = store.catalog.instances(study, series, principal=principal())
    if not records:
        raise NotFound("no such series")
    for_audit = [(r.sop_class_uid, r.sop_instance_uid) for r in records]
    audit("DICOMInstancesTransferred", study=study, series=series, instances=for_audit)

    def body():
        for n, record in enumerate(records, 1):
            try:
                f = store.open(record)
            except FileNotFoundError:
                continue  # deleted meanwhile
            with f:
                info = tarfile.TarInfo(f"{series}/{n:05d}-{record.sop_instance_uid}.dcm")
                info.size = record.size
                info.mtime = int(time.time())
                yield info.tobuf(format=tarfile.USTAR_FORMAT)
                left = info.size
                while left > 0 and (chunk := f.read(min(CHUNK, left))):
                    left -= len(chunk)
                    yield chunk
                yield b"\0" * (-info.size % tarfile.BLOCKSIZE)
        yield b"\0" * (2 * tarfile.BLOCKSIZE)

    response = Response(stream_with_context(body()), content_type="application/x-tar")
    response.headers["Content-Disposition"] = f'attachment; filename="{series}.tar"'
    return response


@api.errorhandler(ArchiveError)
def _archive_error(e: ArchiveError):
    return _json({"status": e.http_status, "error": e.title, "message": e.message}, e.http_status)
