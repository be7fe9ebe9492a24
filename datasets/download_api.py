"""Downloading a granted release over HTTP: a tar or zip stream with Range, or a fetch manifest.

``GET /api/datasets/<id>/releases/<n>/download.tar`` (or ``.zip``) streams the
release's layout (``datasets.download``) as one archive of any size. The bytes
are fixed by the release, so ``Range: bytes=N-`` resumes a download with 206 and
``Content-Range``, ``If-Range`` with the ETag guards against a release that
changed meanwhile (a withdrawal), and a range beyond the end is 416. ``.../fetch``
is a JSON manifest of DICOMweb URLs (study, series, instance) with sizes and
SHA-256 that dicomweb-client and wsidicom read from directly. Both need read on
the release's collection (a grant) or a curator; a refusal is 403 and a Security
Alert, a download an Export audit record.
"""
from __future__ import annotations

import json

from flask import Blueprint, Flask, Response, request, stream_with_context

from archive.auth.access import Principal, requires
from archive.errors import Conflict, NotAuthorized, NotFound, RangeNotSatisfiable

from . import model, release as releases
from .curation import may_curate
from .download import FORMATS, CrcCache, ReleaseFiles, describe

bp = Blueprint("dataset_download", __name__)


def register(app: Flask) -> None:
    app.register_blueprint(bp, url_prefix="/api/datasets")


def _granted(dataset_id: str, version: int, what: str) -> tuple[releases.Manifest, Principal]:
    """The release's manifest, when the caller holds a grant of it (or curates); else 403, audited."""
    from dicomweb import PRINCIPAL_ENVIRON, archive, audit

    rid = releases.release_id(model.check_id(dataset_id), version)
    r = releases.get_release(archive().catalog, rid)
    principal: Principal = request.environ[PRINCIPAL_ENVIRON]
    if not (principal.can("read", r.collection) or may_curate(principal)):
        audit("SecurityAlert", outcome=4, detail={"type": "Use of Restricted Function",
                                                  "description": f"{what} of {rid}: no grant"})
        raise NotAuthorized(f"downloading {rid} needs a grant of this release (apply for access)")
    if r.withdrawn_at:
        raise NotFound(f"release {rid} is withdrawn ({r.withdrawn_reason}); its manifest stays readable")
    return releases.load_manifest(archive().catalog, rid), principal


def _files(manifest: releases.Manifest) -> ReleaseFiles:
    from dicomweb import archive

    try:
        return ReleaseFiles(archive(), manifest, archive().settings.datasets.publisher)
    except FileNotFoundError:  # an instance deleted between the manifest and now: the next request is right
        raise Conflict("the release changed while its files were listed; retry") from None


def _range_error(total: int, message: str) -> Response:
    body = json.dumps({"status": 416, "error": RangeNotSatisfiable.title, "message": message})
    return Response(body, status=416, content_type="application/json",
                    headers={"Content-Range": f"bytes */{total}", "Accept-Ranges": "bytes"})


@bp.get("/<dataset_id>/releases/<int:version>/download")
@requires("authenticated")
def download_tar(dataset_id: str, version: int):
    """The release's download link (``metadata.urls``): the tar."""
    return download(dataset_id, version, "tar")


@bp.get("/<dataset_id>/releases/<int:version>/download.<fmt>")
@requires("authenticated")
def download(dataset_id: str, version: int, fmt: str):
    """The release as one tar or zip; ``Range`` (one range) for a part of it, to resume."""
    from dicomweb import archive, audit, client_address
    from dicomweb.wado import _byte_range

    if fmt not in FORMATS:
        raise NotFound("a release downloads as download.tar or download.zip")
    manifest, _ = _granted(dataset_id, version, f"download.{fmt}")
    files = _files(manifest)
    layout = files.layout(fmt, CrcCache(archive().catalog))
    etag = f'"{files.etag}-{fmt}"'
    rng = None
    if_range = request.headers.get("If-Range")
    if request.headers.get("Range") and (not if_range or if_range.strip() == etag):
        try:
            rng = _byte_range(layout.size)
        except RangeNotSatisfiable as e:
            return _range_error(layout.size, f"{e.message}: the archive is {layout.size} bytes")
    first, last = rng if rng else (0, layout.size - 1)
    if request.method != "HEAD":  # a HEAD (the size, the ETag) exports nothing
        where = client_address(request.environ, archive().settings) or ""
        audit("Export", detail={"description": f"{manifest.release.id} as {fmt}, bytes {first}-{last} of "
                                               f"{layout.size}, {len(files.files)} files", "destination": where})
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Length": str(last - first + 1),
               "Content-Disposition": f'attachment; filename="{files.folder}.{fmt}"',
               "Last-Modified": _http_date(files.mtime)}
    if rng:
        headers["Content-Range"] = f"bytes {first}-{last}/{layout.size}"
    body = stream_with_context(layout.stream(first, last + 1))
    return Response(body, status=206 if rng else 200, content_type=layout.media_type, headers=headers,
                    direct_passthrough=True)


def _http_date(epoch: float) -> str:
    from email.utils import formatdate

    return formatdate(epoch, usegmt=True)


@bp.get("/<dataset_id>/releases/<int:version>/fetch")
@requires("authenticated")
def fetch_manifest(dataset_id: str, version: int):
    """Where each file of the release is: DICOMweb URLs per series and instance (for dicomweb-client and
    wsidicom), the archive downloads, and the layout's files with size and SHA-256 (for the command line)."""
    from dicomweb import SERVICE_ROOT, archive, audit, base_url

    manifest, _ = _granted(dataset_id, version, "fetch manifest")
    files = _files(manifest)
    root = base_url()
    api = f"{root[: -len(SERVICE_ROOT)]}/api/datasets/{manifest.release.dataset_id}/releases/{manifest.release.version}"
    series: dict[tuple[str, str], dict] = {}
    for item in manifest.available:
        entry = series.setdefault((item.study_uid, item.series_uid), {
            "study_uid": item.study_uid, "series_uid": item.series_uid, "kind": item.kind,
            "url": f"{root}/studies/{item.study_uid}/series/{item.series_uid}", "instances": []})
        entry["instances"].append({"sop_instance_uid": item.sop_instance_uid, "sop_class_uid": item.sop_class_uid,
                                   "size": item.size, "sha256": item.sha256,
                                   "url": f"{entry['url']}/instances/{item.sop_instance_uid}"})
    audit("DICOMInstancesAccessed", detail={"description": f"fetch manifest of {manifest.release.id} read",
                                            "action": "R"})
    body = {"release": manifest.release.id, "identifier": manifest.release.identifier,
            "manifest_sha256": manifest.release.manifest_sha256, "dicomweb": root,
            "downloads": {fmt: f"{api}/download.{fmt}" for fmt in FORMATS},
            "series": list(series.values()), "layout": describe(files)}
    return Response(json.dumps(body, separators=(",", ":")), content_type="application/json")
