"""``/api/datasets/...``: apply for a release, decide (data access committee), revoke, list grants.

- ``POST /api/datasets/<id>/releases/<n>/applications`` ``{"project", "purpose", "members"}``
- ``GET /api/datasets/applications`` (yours; a committee member's: those they decide), ``GET .../<app id>``
- ``POST /api/datasets/applications/<app id>/approve`` ``{"expires", "reason"}``, ``/reject`` ``{"reason"}``,
  ``/revoke`` ``{"reason", "members"}``
- ``GET /api/datasets/grants`` (yours; ``?subject=`` or ``?release=`` for a committee member)
- ``GET /api/datasets/visas`` your active grants as GA4GH ControlledAccessGrants visas;
  ``GET /api/datasets/visas/jwks.json`` the key that signs them (public)
"""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Flask, Response, request

from archive.auth.access import Principal, requires
from archive.errors import InvalidRequest, NotAuthorized, NotFound

from . import access, model, release as releases, visas

bp = Blueprint("dataset_access", __name__)


def register(app: Flask) -> None:
    app.register_blueprint(bp, url_prefix="/api/datasets")


def _json(obj: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(obj, ensure_ascii=False, separators=(",", ":")), status=status,
                    content_type="application/json", headers=headers)


def _desk() -> access.Desk:
    from dicomweb import PRINCIPAL_ENVIRON, archive, client_address

    return access.Desk(archive(), request.environ[PRINCIPAL_ENVIRON], client_address(request.environ,
                                                                                     archive().settings))


def _principal() -> Principal:
    from dicomweb import PRINCIPAL_ENVIRON

    return request.environ[PRINCIPAL_ENVIRON]


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object (Content-Type: application/json)")
    return body


def _catalog():
    from dicomweb import archive

    return archive().catalog


def _is_dac(principal: Principal) -> bool:
    return principal.admin or principal.can_any(access.DAC)


@bp.post("/<dataset_id>/releases/<int:version>/applications")
@requires("authenticated")
def apply(dataset_id: str, version: int):
    rid = releases.release_id(model.check_id(dataset_id), version)
    app = _desk().apply(rid, _body())
    from dicomweb import SERVICE_ROOT, base_url

    where = f"{base_url()[: -len(SERVICE_ROOT)]}/api/datasets/applications/{app.id}"
    return _json(app.to_json(), 201, {"Location": where})


@bp.get("/applications")
@requires("authenticated")
def list_applications():
    principal = _principal()
    rid = request.args.get("release")
    if rid:
        releases.parse_release_id(rid)
    found = access.list_applications(_catalog(), release_id=rid, status=request.args.get("status") or None,
                                     involving=None if _is_dac(principal) else principal.subject)
    return _json({"applications": [a.to_json() for a in found if access.may_see(principal, a)]})


@bp.get("/applications/<app_id>")
@requires("authenticated")
def one_application(app_id: str):
    app = access.get_application(_catalog(), access.check_application_id(app_id))
    if not access.may_see(_principal(), app):
        raise NotFound(f"no application {app_id}")
    return _json(app.to_json())


@bp.post("/applications/<app_id>/<action>")
@requires("authenticated")
def decide(app_id: str, action: str):
    desk = _desk()
    if action == "approve":
        return _json(desk.approve(app_id, _body()).to_json())
    if action == "reject":
        return _json(desk.reject(app_id, _body()).to_json())
    if action == "revoke":
        app, n = desk.revoke(app_id, _body())
        return _json(app.to_json() | {"revoked_grants": n})
    raise NotFound("an application is approved, rejected or revoked: POST .../approve, .../reject, .../revoke")


@bp.get("/grants")
@requires("authenticated")
def list_grants():
    principal = _principal()
    subject, rid = request.args.get("subject"), request.args.get("release")
    if rid:
        releases.parse_release_id(rid)
    if (subject and subject != principal.subject or rid and not subject) and not _is_dac(principal):
        raise NotAuthorized("other principals' grants are for the data access committee (role dac)")
    found = access.list_grants(_catalog(), subject=subject or (None if rid else principal.subject), release_id=rid,
                               active_only=request.args.get("active") in ("1", "true"))
    return _json({"grants": [g.to_json() for g in found]})


@bp.get("/visas")
@requires("authenticated")
def my_visas():
    """Your active grants as signed GA4GH ControlledAccessGrants visas (a ``ga4gh_passport_v1`` list)."""
    from dicomweb import SERVICE_ROOT, archive, audit, base_url

    signer = visas.signer(archive().settings)
    principal = _principal()
    grants = access.list_grants(_catalog(), subject=principal.subject, active_only=True)
    base = base_url()[: -len(SERVICE_ROOT)]
    tokens = [signer.visa(g, base, archive().catalog) for g in grants]
    audit("SecurityAlert", detail={"type": "Use of Restricted Function",
                                   "description": f"{len(tokens)} ControlledAccessGrants visas issued"})
    return _json({"ga4gh_passport_v1": tokens})


@bp.get("/visas/jwks.json")
@requires("public")
def visa_keys():
    from dicomweb import archive

    return _json(visas.signer(archive().settings).jwks())
