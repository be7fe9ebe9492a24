"""WADO-RS: instances, metadata, bulkdata, frames, rendered, thumbnail; and DELETE.

Frames are served from the catalog's frame index with one positioned read each (through
object storage, the frames of one request in one coalesced, concurrent fetch);
metadata from the stored DICOM JSON; neither parses the stored file.
"""
from __future__ import annotations

import re

from flask import Blueprint, Response, request, stream_with_context

from archive.auth.access import requires
from archive.catalog import InstanceRecord
from archive.dicomjson import absolute_bulk_uris
from archive.errors import InvalidRequest, NotAcceptable, NotFound, RangeNotSatisfiable
from archive.storage import CHUNK
from archive.uids import check_uid

from . import archive, audit, audit_frames, media, multipart, principal, render, resource_url

bp = Blueprint("wado", __name__)
MAX_FRAMES_PER_REQUEST = 10000


def _uids(study: str, series: str | None = None, sop: str | None = None) -> None:
    check_uid(study, "StudyInstanceUID")
    if series is not None:
        check_uid(series, "SeriesInstanceUID")
    if sop is not None:
        check_uid(sop, "SOPInstanceUID")


# --- instances ---------------------------------------------------------------------


@bp.get("/studies/<study>")
@bp.get("/studies/<study>/series/<series>")
@bp.get("/studies/<study>/series/<series>/instances/<sop>")
@requires("read")
def retrieve(study: str, series: str | None = None, sop: str | None = None):
    _uids(study, series, sop)
    params = media.accepts_multipart(media.parse_accept(request.headers.get("Accept")), "application/dicom")
    if params is None:
        raise NotAcceptable('instances are sent as multipart/related; type="application/dicom"')
    records = archive().catalog.instances(study, series, sop, principal=principal())
    if not records:
        raise NotFound("no such study, series or instance")
    wanted = params.get("transfer-syntax")
    if wanted not in (None, "*") and any(r.transfer_syntax_uid != wanted for r in records):
        raise NotAcceptable(f"instances are stored in another transfer syntax than {wanted[:64]}; "
                            "this archive sends them as stored (transfer-syntax=*)")
    boundary = multipart.new_boundary()
    store = archive()
    store.storage.check()  # S3 unreachable: a 503 now, not a 200 that breaks off
    _audit_instances("DICOMInstancesTransferred", records)

    def body():
        for n, record in enumerate(records):
            head = multipart.part_header(boundary, f"application/dicom; transfer-syntax={record.transfer_syntax_uid}",
                                         resource_url(record.study_uid, record.series_uid, record.sop_instance_uid))
            yield (b"\r\n" if n else b"") + head
            try:
                f = store.open(record)
            except FileNotFoundError:
                continue  # deleted meanwhile: skip, the catalog no longer lists it
            with f:
                while chunk := f.read(CHUNK):
                    yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    return Response(stream_with_context(body()), content_type=multipart.content_type(boundary, "application/dicom"))


# --- metadata ----------------------------------------------------------------------


@bp.get("/studies/<study>/metadata")
@bp.get("/studies/<study>/series/<series>/metadata")
@bp.get("/studies/<study>/series/<series>/instances/<sop>/metadata")
@requires("read")
def metadata(study: str, series: str | None = None, sop: str | None = None):
    _uids(study, series, sop)
    if not media.accepts(media.parse_accept(request.headers.get("Accept")), "application/dicom+json", "application/json"):
        raise NotAcceptable("metadata is sent as application/dicom+json")
    found = archive().metadata(study, series, sop, principal())
    _audit_instances("DICOMInstancesAccessed", [r for r, _ in found])
    parts = [absolute_bulk_uris(text, resource_url(r.study_uid, r.series_uid, r.sop_instance_uid))
             for r, text in found]
    return Response("[" + ",".join(parts) + "]", content_type="application/dicom+json")


# --- bulkdata ----------------------------------------------------------------------


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def _byte_range(total: int) -> tuple[int, int] | None:
    value = request.headers.get("Range")
    if not value:
        return None
    m = _RANGE.match(value.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise RangeNotSatisfiable("only a single bytes=FIRST-LAST range is supported")
    if m.group(1):
        first = int(m.group(1))
        last = min(int(m.group(2)), total - 1) if m.group(2) else total - 1
    else:
        first, last = max(0, total - int(m.group(2))), total - 1
    if first > last or first >= total:
        raise RangeNotSatisfiable(f"range outside 0-{total - 1}")
    return first, last


@bp.get("/studies/<study>/series/<series>/instances/<sop>/bulkdata/<path:path>")
@requires("read")
def bulkdata(study: str, series: str, sop: str, path: str):
    _uids(study, series, sop)
    store = archive()
    record = store.locate(study, series, sop, principal())
    if path.upper() == "7FE00010":
        start, length = store.pixel_value_range(record)
        read = lambda a, n: store.read_range(record, start + a, n)  # noqa: E731
    else:
        value = store.bulk_value(record, path)
        length = len(value)
        read = lambda a, n: value[a:a + n]  # noqa: E731
    accept = media.parse_accept(request.headers.get("Accept"))
    rng = _byte_range(length)
    first, last = rng if rng else (0, length - 1)
    data = read(first, last - first + 1) if length else b""
    status = 206 if rng else 200
    if media.accepts_multipart(accept, "application/octet-stream") is not None and not _prefers_single(accept):
        boundary = multipart.new_boundary()
        body = multipart.encode(boundary, [("application/octet-stream", data)])
        response = Response(body, status=status, content_type=multipart.content_type(boundary, "application/octet-stream"))
    elif media.accepts(accept, "application/octet-stream"):
        response = Response(data, status=status, content_type="application/octet-stream")
    else:
        raise NotAcceptable("bulkdata is sent as application/octet-stream")
    if path.upper() == "7FE00010":
        audit_frames(study, series, sop)
    else:
        audit("DICOMInstancesAccessed", study=study, series=series, instances=[(record.sop_class_uid, sop)])
    if rng:
        response.headers["Content-Range"] = f"bytes {first}-{last}/{length}"
    response.headers["Accept-Ranges"] = "bytes"
    return response


def _prefers_single(accept: list[media.MediaRange]) -> bool:
    return bool(accept) and accept[0].type == "application/octet-stream"


# --- frames ------------------------------------------------------------------------


def parse_frame_list(text: str) -> list[int]:
    try:
        numbers = [int(p) for p in text.split(",")]
    except ValueError:
        raise InvalidRequest("frame list must be comma-separated positive integers") from None
    if not numbers or any(n < 1 for n in numbers) or len(numbers) > MAX_FRAMES_PER_REQUEST:
        raise InvalidRequest(f"frame list must have 1-{MAX_FRAMES_PER_REQUEST} numbers, each at least 1")
    return numbers


@bp.get("/studies/<study>/series/<series>/instances/<sop>/frames/<frames>")
@requires("read")
def frames(study: str, series: str, sop: str, frames: str):
    _uids(study, series, sop)
    numbers = parse_frame_list(frames)
    store = archive()
    record = store.locate(study, series, sop, principal())
    choice = media.frame_format(request.headers.get("Accept"), record.transfer_syntax_uid, single=len(numbers) == 1)
    if choice is None:
        raise NotAcceptable(f"frames are stored as {record.transfer_syntax_uid}; the Accept header allows "
                            "neither that nor uncompressed application/octet-stream")
    data = store.frames(store.level_frames(record, numbers))
    audit_frames(study, series, sop, len(data))
    if choice.decode:
        header = _header(sop)
        data = [render.native_bytes(render.decode_frame(d, record.transfer_syntax_uid, header)) for d in data]
    part_type = f"{choice.media_type}; transfer-syntax={choice.transfer_syntax}"
    if not choice.multipart:
        return Response(data[0], content_type=part_type)
    boundary = multipart.new_boundary()
    body = multipart.encode(boundary, [(part_type, d) for d in data])
    return Response(body, content_type=multipart.content_type(boundary, choice.media_type, choice.transfer_syntax))


# --- rendered and thumbnail ------------------------------------------------------------


def _header(sop: str) -> dict:
    """The instance's header as DICOM JSON, for decoding its frames."""
    text = archive().catalog.header_json(sop)
    if text is None:
        raise NotFound("the instance was deleted while it was being read")
    return render.header_dict(text)


def _render_media() -> str:
    chosen = media.accepts(media.parse_accept(request.headers.get("Accept")), "image/jpeg", "image/png")
    if chosen is None:
        raise NotAcceptable("rendered images are image/jpeg or image/png")
    return chosen


def _rendered_response(img, record: InstanceRecord, default_viewport: tuple[int, int] | None = None) -> Response:
    kind = _render_media()
    audit_frames(record.study_uid, record.series_uid, record.sop_instance_uid)
    viewport = render.parse_viewport(request.args.get("viewport")) or default_viewport
    data = render.encode(img, kind, render.parse_quality(request.args.get("quality")), viewport)
    return Response(data, content_type=kind)


def _instance_image(record: InstanceRecord):
    store = archive()
    header = _header(record.sop_instance_uid)
    return render.assemble(header, store.frame_count(record), lambda n: store.frame(record, n),
                           record.transfer_syntax_uid)


@bp.get("/studies/<study>/series/<series>/instances/<sop>/rendered")
@requires("read")
def rendered_instance(study: str, series: str, sop: str):
    _uids(study, series, sop)
    record = archive().locate(study, series, sop, principal())
    return _rendered_response(_instance_image(record), record)


@bp.get("/studies/<study>/series/<series>/instances/<sop>/frames/<frames>/rendered")
@requires("read")
def rendered_frame(study: str, series: str, sop: str, frames: str):
    _uids(study, series, sop)
    numbers = parse_frame_list(frames)
    if len(numbers) != 1:
        raise InvalidRequest("rendered frames are served one at a time")
    store = archive()
    record = store.locate(study, series, sop, principal())
    if numbers[0] > store.frame_count(record):
        raise InvalidRequest(f"frame {numbers[0]} out of range 1-{store.frame_count(record)}")
    header = _header(sop)
    arr = render.decode_frame(store.frame(record, numbers[0]), record.transfer_syntax_uid, header)
    return _rendered_response(render.to_image(arr, header), record)


@bp.get("/studies/<study>/series/<series>/instances/<sop>/thumbnail")
@requires("read")
def thumbnail_instance(study: str, series: str, sop: str):
    _uids(study, series, sop)
    record = archive().locate(study, series, sop, principal())
    return _rendered_response(_instance_image(record), record, (256, 256))


@bp.get("/studies/<study>/thumbnail")
@bp.get("/studies/<study>/series/<series>/thumbnail")
@requires("read")
def thumbnail_series(study: str, series: str | None = None):
    """The smallest pyramid level of the (first) slide: a few tiles, never level 0."""
    _uids(study, series)
    store = archive()
    records = [r for r in store.catalog.instances(study, series, principal=principal()) if r.frame_layout is not None]
    if not records:
        raise NotFound("no images to make a thumbnail from")
    first_series = records[0].series_uid
    candidates = [r for r in records if r.series_uid == first_series]
    volume = [r for r in candidates if _is_volume(store, r)] or candidates
    smallest = min(volume, key=lambda r: store.frame_count(r) * (r.rows or 1) * (r.columns or 1))
    return _rendered_response(_instance_image(smallest), smallest, (256, 256))


def _is_volume(store, record: InstanceRecord) -> bool:
    text = store.catalog.header_json(record.sop_instance_uid) or ""
    image_type = render.header_dict(text).get("00080008", {}).get("Value", [])
    return len(image_type) < 3 or image_type[2] == "VOLUME"


# --- delete ------------------------------------------------------------------------


@bp.delete("/studies/<study>")
@bp.delete("/studies/<study>/series/<series>")
@bp.delete("/studies/<study>/series/<series>/instances/<sop>")
@requires("delete")
def delete(study: str, series: str | None = None, sop: str | None = None):
    _uids(study, series, sop)
    _audit_instances("DICOMInstancesDeleted", archive().delete(study, series, sop, principal()))
    return Response(status=204)


def _audit_instances(event: str, records: list[InstanceRecord]) -> None:
    """One audit message per study (and series, when all the records are of one)."""
    by_study: dict[str, list[InstanceRecord]] = {}
    for r in records:
        by_study.setdefault(r.study_uid, []).append(r)
    for study, rs in by_study.items():
        series = {r.series_uid for r in rs}
        audit(event, study=study, series=series.pop() if len(series) == 1 else None,
              instances=[(r.sop_class_uid, r.sop_instance_uid) for r in rs])
