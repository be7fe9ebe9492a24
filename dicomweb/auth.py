"""Authentication and route requirements for the HTTP app, and CORS.

Before each request the route's declared requirement (``archive.auth.access.requires``)
is read from its view function; a route that declares nothing is refused (deny by
default). Credentials come from ``Authorization: Bearer`` (JWT or API key) or
``Basic`` (any user name, an API key as password). The principal goes into
``request.environ[PRINCIPAL_ENVIRON]`` for the views and the audit trail.
"""
from __future__ import annotations

import base64
import binascii
import logging

from flask import Flask, current_app, jsonify, request

from archive.auth.access import Principal
from archive.auth.authn import REQUIRED, Authenticator, Unauthenticated

log = logging.getLogger(__name__)


def principal_from(environ: dict, authenticator: Authenticator, remote: str | None) -> Principal:
    """The request's principal; Unauthenticated when its credentials are missing (and required) or bad."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    if not header:
        return authenticator.no_credentials()
    if not authenticator.enabled:
        return authenticator.no_credentials()
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return authenticator.bearer(value, remote)
    if scheme.lower() == "basic" and value:
        try:
            _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthenticated("malformed Basic credentials") from None
        return authenticator.password(password, remote)
    raise Unauthenticated("unsupported Authorization scheme")


def install(app: Flask, authenticator: Authenticator) -> None:
    from . import PRINCIPAL_ENVIRON, _error, client_address

    app.extensions["authenticator"] = authenticator
    origins = set(app.config["SETTINGS"].auth.cors_origins)

    @app.before_request
    def authenticate():
        if request.method == "OPTIONS" or request.endpoint is None:
            return None  # CORS preflight (Flask answers it) or an unknown URL (404)
        need = getattr(current_app.view_functions.get(request.endpoint), "required", None)
        if need is None:
            log.error("route %s declares no access requirement; refused", request.endpoint)
            return _error(403, "Forbidden", "this resource declares no access requirement")
        if need == "public":
            return None
        view = current_app.view_functions[request.endpoint]
        if getattr(view, "other_credential", None) is not None and view.other_credential(request.environ):
            return None  # e.g. the scrape token of /metrics (dicomweb.metrics); it opens that route only
        remote = client_address(request.environ, app.config["SETTINGS"])
        try:
            principal = principal_from(request.environ, authenticator, remote)
        except Unauthenticated as e:
            authenticator.refused(e, remote, f"HTTP {request.method} {request.endpoint}")
            response = _error(401, "Unauthorized", e.message)
            response.headers["WWW-Authenticate"] = 'Bearer realm="slidearchive"'
            return response
        request.environ[PRINCIPAL_ENVIRON] = principal
        if need in ("write", "delete", "admin") and not principal.can_any(need):
            if principal.kind == "anonymous":  # anonymous read is allowed; anything more needs credentials
                response = _error(401, "Unauthorized", REQUIRED)
                response.headers["WWW-Authenticate"] = 'Bearer realm="slidearchive"'
                return response
            return _error(403, "Forbidden", f"this needs the {need} role on some collection")
        return None

    @app.after_request
    def cors(response):
        origin = request.headers.get("Origin")
        if not authenticator.enabled:
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin and origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers.add("Vary", "Origin")
        else:
            return response
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Accept, Content-Type, Range, Authorization"
        response.headers["Access-Control-Expose-Headers"] = ("Content-Type, Content-Length, Content-Range, "
                                                             "Content-Location, Warning")
        return response


def alert_if_hidden(error: Exception) -> None:
    """A "not found" for something that exists outside the principal's collections: a Security Alert
    (the client still gets the plain 404; checked only on this error path, never on success)."""
    from archive.auth.access import SYSTEM
    from archive.errors import NotFound

    from . import PRINCIPAL_ENVIRON, archive, audit

    principal = request.environ.get(PRINCIPAL_ENVIRON)
    args = request.view_args or {}
    if not isinstance(error, NotFound) or principal is None or principal.collections("read") is None:
        return
    catalog = archive().catalog
    study = args.get("study")
    try:
        hidden = (bool(catalog.instances(study, principal=SYSTEM)) if study
                  else bool(args.get("series") and catalog.series_study(args["series"], principal=SYSTEM)))
    except Exception:  # noqa: BLE001 - a malformed UID is simply not found
        return
    if hidden:
        audit("SecurityAlert", outcome=4, study=study, series=args.get("series"),
              detail={"type": "Use of Restricted Function",
                      "description": f"{request.method} {request.endpoint}: outside the principal's collections"})


def cors_headers(environ: dict, authenticator: Authenticator, origins: set[str]) -> list[tuple[str, str]]:
    """The CORS headers of the frame fast path (the same rules as ``cors`` above)."""
    expose = ("Access-Control-Expose-Headers", "Content-Type, Content-Length, Content-Range, Content-Location, Warning")
    if not authenticator.enabled:
        return [("Access-Control-Allow-Origin", "*"), expose]
    origin = environ.get("HTTP_ORIGIN")
    if origin and origin in origins:
        return [("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials", "true"),
                ("Vary", "Origin"), expose]
    return []


def jsonify_principal(principal: Principal):
    """``GET /api/whoami``: what the archive thinks the caller may do."""
    return jsonify(subject=principal.subject, kind=principal.kind, admin=principal.admin,
                   roles={c: sorted(r) for c, r in sorted(principal.roles.items())})
