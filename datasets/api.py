"""``/api/datasets``: find and cite datasets (public metadata), curate them (curators), read a manifest (grantees).

What anyone may read is what a release froze: its metadata, counts, citation,
schema.org JSON-LD and DataCite JSON (so catalogues harvest it without
credentials). A dataset that has no release yet exists only for curators. A
manifest (SOP Instance UIDs, checksums, clinical fields per case) needs read
access to the release's collection, which a grant gives, or a curator. Errors
answer ``{"status", "error", "message"}`` like the rest of the archive.
"""
from __future__ import annotations

import json
from typing import Any, Iterator

from flask import Blueprint, Flask, Response, current_app, request, stream_with_context
from werkzeug.exceptions import Unauthorized

from archive.auth.access import UNAUTHENTICATED, Principal, requires
from archive.errors import InvalidRequest, NotAuthorized, NotFound

from . import metadata, model, release
from .curation import Curation, may_curate

bp = Blueprint("datasets", __name__)
MAX_LIMIT = 500


def register(app: Flask) -> None:
    app.register_blueprint(bp, url_prefix="/api/datasets")


def _json(obj: Any, status: int = 200, content_type: str = "application/json", headers: dict | None = None) -> Response:
    return Response(json.dumps(obj, ensure_ascii=False, separators=(",", ":")), status=status,
                    content_type=content_type, headers=headers)


def _archive():
    from dicomweb import archive

    return archive()


def _base() -> str:
    from dicomweb import SERVICE_ROOT, base_url

    return base_url()[: -len(SERVICE_ROOT)]


def _publisher() -> str:
    return _archive().settings.datasets.publisher


def _caller() -> Principal | None:
    """The principal on a public route: from the credentials if any were sent, else nobody (or
    everyone, with authentication off). Bad credentials are refused as anywhere else."""
    from dicomweb import PRINCIPAL_ENVIRON, client_address
    from dicomweb.auth import principal_from

    found = request.environ.get(PRINCIPAL_ENVIRON)
    if found is not None:
        return found
    authenticator = current_app.extensions["authenticator"]
    if not authenticator.enabled:
        return UNAUTHENTICATED
    if not request.headers.get("Authorization"):
        return None
    from archive.auth.authn import Unauthenticated

    try:
        principal = principal_from(request.environ, authenticator, client_address(request.environ,
                                                                                   _archive().settings))
    except Unauthenticated as e:
        raise Unauthorized(e.message) from None
    request.environ[PRINCIPAL_ENVIRON] = principal
    return principal


def _curation() -> Curation:
    from dicomweb import PRINCIPAL_ENVIRON, client_address

    return Curation(_archive(), request.environ[PRINCIPAL_ENVIRON], client_address(request.environ,
                                                                                   _archive().settings))


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object (Content-Type: application/json)")
    return body


def _int_arg(name: str, default: int, high: int) -> int:
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer") from None
    if not 0 <= value <= high:
        raise InvalidRequest(f"{name} must be between 0 and {high}")
    return value


# --- views of a release -----------------------------------------------------------------

def release_json(r: release.Release, base: str, publisher: str) -> dict[str, Any]:
    out = r.to_json()
    out["citation"] = metadata.citation(r, publisher)
    out["urls"] = metadata.urls(base, r)
    out["resolvable_identifier"] = metadata.resolvable(r.identifier)
    return out


def dataset_json(catalog, dataset_id: str, principal: Principal | None, base: str, publisher: str) -> dict[str, Any]:
    """A dataset as its newest release describes it, with every release; curators also get the
    current (possibly unreleased) definition."""
    made = release.releases(catalog, dataset_id)
    curator = principal is not None and may_curate(principal)
    if not made and not curator:
        raise NotFound(f"no dataset {dataset_id[:64]!r}")
    out: dict[str, Any] = {"id": dataset_id}
    if made:
        out.update(made[-1].metadata)
        out["latest_version"] = made[-1].version
    out["releases"] = [release_json(r, base, publisher) for r in reversed(made)]
    if curator:
        definition = model.get(catalog, dataset_id)
        added, removed = model.listed_series(catalog, dataset_id)
        out["definition"] = definition.to_json() | {"added_series": added, "removed_series": removed}
    return out


def _release(dataset_id: str, version: int) -> release.Release:
    return release.get_release(_archive().catalog, release.release_id(model.check_id(dataset_id), version))


def _previous(r: release.Release) -> release.Release | None:
    if r.version == 1:
        return None
    return release.get_release(_archive().catalog, release.release_id(r.dataset_id, r.version - 1))


# --- find and cite (public) -----------------------------------------------------------------

@bp.get("")
@requires("public")
def list_datasets():
    """Released datasets (newest release each), searched by ``q``; curators see drafts too (``drafts=1``)."""
    catalog, principal, base = _archive().catalog, _caller(), _base()
    text, limit, offset = request.args.get("q"), _int_arg("limit", 50, MAX_LIMIT), _int_arg("offset", 0, 10 ** 6)
    if len(text or "") > 200:
        raise InvalidRequest("q is longer than 200 characters")
    if request.args.get("drafts") in ("1", "true") and principal is not None and may_curate(principal):
        total, found = model.list_datasets(catalog, text, limit, offset)
        items = [dataset_json(catalog, d.id, principal, base, _publisher()) for d in found]
    else:
        total, latest = release.latest_releases(catalog, text, limit, offset)
        items = [dataset_json(catalog, r.dataset_id, None, base, _publisher()) for r in latest]
    return _json({"total": total, "limit": limit, "offset": offset, "datasets": items})


@bp.get("/<dataset_id>")
@requires("public")
def one_dataset(dataset_id: str):
    return _json(dataset_json(_archive().catalog, model.check_id(dataset_id), _caller(), _base(), _publisher()))


@bp.get("/<dataset_id>/releases/<int:version>")
@requires("public")
def one_release(dataset_id: str, version: int):
    return _json(release_json(_release(dataset_id, version), _base(), _publisher()))


@bp.get("/<dataset_id>/releases/<int:version>/jsonld")
@requires("public")
def release_jsonld(dataset_id: str, version: int):
    r = _release(dataset_id, version)
    return _json(metadata.json_ld(r, _base(), _publisher(), _previous(r)), content_type="application/ld+json")


@bp.get("/<dataset_id>/releases/<int:version>/datacite")
@requires("public")
def release_datacite(dataset_id: str, version: int):
    r = _release(dataset_id, version)
    return _json(metadata.datacite(r, _base(), _publisher(), _previous(r)),
                 content_type="application/vnd.datacite.datacite+json")


@bp.get("/<dataset_id>/releases/<int:version>/citation")
@requires("public")
def release_citation(dataset_id: str, version: int):
    return Response(metadata.citation(_release(dataset_id, version), _publisher()) + "\n",
                    content_type="text/plain; charset=utf-8")


@bp.get("/<dataset_id>/releases/<int:version>/manifest")
@requires("authenticated")
def release_manifest(dataset_id: str, version: int):
    """The frozen manifest; for grantees of the release (read on its collection) and curators."""
    from dicomweb import PRINCIPAL_ENVIRON, audit

    r = _release(dataset_id, version)
    principal: Principal = request.environ[PRINCIPAL_ENVIRON]
    if not (principal.can("read", r.collection) or may_curate(principal)):
        audit("SecurityAlert", outcome=4, detail={"type": "Use of Restricted Function",
                                                  "description": f"manifest of {r.id}: no grant"})
        raise NotAuthorized(f"the manifest of {r.id} needs a grant of this release (apply for access)")
    audit("DICOMInstancesAccessed", detail={"description": f"manifest of {r.id} read", "action": "R"})
    return Response(stream_with_context(_manifest_json(r)), content_type="application/json")


def _manifest_json(r: release.Release) -> Iterator[str]:
    """The manifest as one JSON document, written item by item (a release may hold millions)."""
    catalog = _archive().catalog
    head = {"release": r.to_json(), "cases": release.load_cases(catalog, r.id)}
    yield json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1] + ',"items":['
    batch: list[str] = []
    for n, item in enumerate(release.iter_items(catalog, r.id)):
        batch.append(("," if n else "") + json.dumps(item.to_json(), separators=(",", ":")))
        if len(batch) == 1000:
            yield "".join(batch)
            batch = []
    yield "".join(batch) + "]}"


# --- curation ---------------------------------------------------------------------------------

@bp.post("")
@requires("authenticated")
def create_dataset():
    curation = _curation()
    dataset = curation.create(_body())
    return _json(dataset_json(_archive().catalog, dataset.id, curation.principal, _base(), _publisher()), 201,
                 headers={"Location": f"{_base()}/api/datasets/{dataset.id}"})


@bp.put("/<dataset_id>")
@requires("authenticated")
def update_dataset(dataset_id: str):
    dataset = _curation().update(model.check_id(dataset_id), _body())
    return _json(dataset.to_json())


@bp.post("/<dataset_id>/series")
@requires("authenticated")
def change_series(dataset_id: str):
    """``{"add": [Series Instance UIDs], "remove": [...]}``."""
    body = _body()
    if set(body) - {"add", "remove"} or not (body.get("add") or body.get("remove")):
        raise InvalidRequest('give {"add": [series UIDs]} and/or {"remove": [series UIDs]}')
    curation, dataset_id = _curation(), model.check_id(dataset_id)
    added = curation.add_series(dataset_id, model.check_uids(body.get("add") or [])) if body.get("add") else 0
    removed = curation.remove_series(dataset_id, model.check_uids(body.get("remove") or [])) \
        if body.get("remove") else 0
    return _json({"added": added, "removed": removed})


@bp.put("/<dataset_id>/cases")
@requires("authenticated")
def set_cases(dataset_id: str):
    """``{"cases": [{"patient_id", "diagnosis", "age_band", "sex", "anatomic_site"}]}``."""
    rows = _body().get("cases")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InvalidRequest('give {"cases": [{"patient_id": ..., "diagnosis": ...}, ...]}')
    return _json({"cases": _curation().set_cases(model.check_id(dataset_id), rows)})


@bp.post("/<dataset_id>/releases")
@requires("authenticated")
def make_release(dataset_id: str):
    made = _curation().release(model.check_id(dataset_id))
    where = metadata.urls(_base(), made)["api"]
    return _json(release_json(made, _base(), _publisher()), 201, headers={"Location": where})


@bp.post("/<dataset_id>/releases/<int:version>/withdraw")
@requires("authenticated")
def withdraw_release(dataset_id: str, version: int):
    """``{"reason": text, "series": [UIDs]}``: withdraw those series, or (no series) the whole release."""
    body = _body()
    if set(body) - {"reason", "series"}:
        raise InvalidRequest('give {"reason": "...", "series": [optional series UIDs]}')
    series = body.get("series")
    rid = release.release_id(model.check_id(dataset_id), version)
    marked = _curation().withdraw(rid, body.get("reason") or "", None if series is None else model.check_uids(series))
    return _json({"withdrawn_instances": marked,
                  "release": release_json(release.get_release(_archive().catalog, rid), _base(), _publisher())})
