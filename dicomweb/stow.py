"""STOW-RS: POST /studies[/{study}] with multipart/related; type="application/dicom"."""
from __future__ import annotations

from flask import Blueprint, Response, request

from archive.auth.access import requires, target_collection
from archive.dicomjson import dumps
from archive.errors import ArchiveError, InvalidRequest, NotAcceptable, UnsupportedMediaType
from archive.ingest import Origin
from archive.uids import check_uid

from . import archive, audit, drain, media, multipart, principal, resource_url, settings

bp = Blueprint("stow", __name__)


ERROR_COMMENT = "00000902"  # Error Comment (0000,0902), LO: the reason in words, as in a DIMSE response


def _item(sop_class: str | None, sop_uid: str | None) -> dict:
    item = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_uid:
        item["00081155"] = {"vr": "UI", "Value": [sop_uid]}
    return item


def _failed(code: int, text: str, sop_class: str | None = None, sop_uid: str | None = None) -> dict:
    """A Failed SOP Sequence item: the instance when known, FailureReason and the reason in words."""
    item = _item(sop_class, sop_uid)
    item["00081197"] = {"vr": "US", "Value": [code]}
    item[ERROR_COMMENT] = {"vr": "LO", "Value": [_comment(text)]}
    return item


def _comment(text: str) -> str:
    """LO: at most 64 characters, no backslash (the value separator)."""
    text = text.replace("\\", "/")
    return text if len(text) <= 64 else text[:61] + "..."


@bp.post("/studies")
@bp.post("/studies/<study>")
@requires("write")
def store(study: str | None = None):
    if study is not None:
        check_uid(study, "StudyInstanceUID")
    accept = media.parse_accept(request.headers.get("Accept"))
    if not media.accepts(accept, "application/dicom+json", "application/json"):
        raise NotAcceptable("STOW-RS responses are application/dicom+json")
    boundary, part_type = multipart.boundary_of(request.headers.get("Content-Type"))
    if part_type and part_type != "application/dicom":
        raise UnsupportedMediaType('only type="application/dicom" parts are accepted (no metadata+bulkdata)')
    store = archive()
    origin = target_origin("stow", request.args.get("collection"))
    referenced, failed, warned = [], [], False
    unavailable = 0  # parts refused because an engine (catalog, storage) is down: retryable
    received: dict[str, list[tuple[str | None, str]]] = {}
    messages = []
    parts = multipart.read_parts(drain.guard(request.stream), boundary, store.storage.new_temp)
    for n, (headers, path) in enumerate(parts, start=1):
        try:
            ctype = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
            if ctype != "application/dicom":
                failed.append(_failed(0xC000, "Content-Type is not application/dicom"))
                messages.append(f"part {n}: Content-Type {ctype[:40]} is not application/dicom")
                continue
            try:
                result = store.store_file(path, origin, owned=True, expected_study=study)
            except ArchiveError as e:
                unavailable += e.http_status == 503
                failed.append(_failed(e.failure_reason, e.message, e.sop_class_uid, e.sop_instance_uid))
                messages.append(f"part {n}: {e.title}: {e.message}")
                continue
        finally:
            path.unlink(missing_ok=True)
        if result.message:
            messages.append(f"part {n}: {result.message}")
        if result.status == "stored" and result.study_uid and result.sop_instance_uid:
            received.setdefault(result.study_uid, []).append((result.sop_class_uid, result.sop_instance_uid))
        item = _item(result.sop_class_uid, result.sop_instance_uid)
        if result.status in ("stored", "duplicate"):
            item["00081190"] = {"vr": "UR", "Value": [resource_url(result.study_uid, result.series_uid,
                                                                    result.sop_instance_uid)]}
        if result.warning is not None:
            item["00081196"] = {"vr": "US", "Value": [result.warning]}
            warned = True
        if result.message and result.warning is not None:
            item[ERROR_COMMENT] = {"vr": "LO", "Value": [_comment(result.message)]}
        referenced.append(item)
    if not referenced and not failed:
        raise InvalidRequest("multipart body contains no parts")
    body: dict = {}
    studies = {i["00081190"]["Value"][0].split("/series/")[0] for i in referenced if "00081190" in i}
    if len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [studies.pop()]}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    status = 409 if not referenced else 202 if failed or warned else 200
    if not referenced and unavailable == len(failed):
        status = 503  # nothing stored, and sending the same again later will do
    for study_uid, instances in received.items():
        audit("DICOMInstancesTransferred", study=study_uid, instances=instances, outcome=4 if failed else 0,
              detail={"action": "C", "description": f"STOW-RS: {len(failed)} parts failed" if failed else ""})
    response = Response(dumps(body), status=status, content_type="application/dicom+json")
    for message in messages[:100]:
        response.headers.add("Warning", f'299 slidearchive "{_quoted(message)}"')
    if status == 503:
        response.headers["Retry-After"] = "5"
    return response


def target_origin(kind: str, asked: str | None) -> Origin:
    """Where stored instances go (``?collection=``, see archive.auth.access.target_collection)."""
    who = principal()
    return Origin(kind, collection=target_collection(who, asked, settings().default_collection),
                  writable=who.collections("write"))


def _quoted(text: str) -> str:
    return text.replace("\\", "/").replace('"', "'").encode("ascii", "replace").decode()

