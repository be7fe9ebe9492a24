"""DICOMweb (PS3.18) over the archive: a Flask app factory.

Service root ``/dicomweb``. Every error answers JSON ``{"status", "error", "message"}``
from the one error table in ``archive.errors``; unexpected failures answer a
generic 500 without the exception text (which may hold data-set values).
"""
from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from archive.auth.access import Principal, requires
from archive.auth.authn import Authenticator
from archive.catalog.query import check_text
from archive.config import Settings
from archive.errors import ArchiveError
from archive.logs import failure_site
from archive.metrics import error as count_error
from archive.service import Archive

log = logging.getLogger(__name__)
SERVICE_ROOT = "/dicomweb"


def create_app(settings: Settings, archive: Archive | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)  # the web app (web/) serves /static itself
    app.config["SETTINGS"] = settings
    app.extensions["archive"] = archive or Archive(settings)
    from .auth import alert_if_hidden, install, jsonify_principal
    from .fastframes import FastFrames

    authenticator = Authenticator(settings, app.extensions["archive"].audit, app.extensions["archive"].catalog)
    install(app, authenticator)
    app.wsgi_app = FastFrames(app.wsgi_app, app.extensions["archive"], authenticator)

    @app.get("/api/whoami")
    @requires("authenticated")
    def whoami():
        return jsonify_principal(principal())

    from . import drain, health, metrics, qido, stow, wado

    for module in (stow, qido, wado):
        app.register_blueprint(module.bp, url_prefix=SERVICE_ROOT)
    _register_optional(app)

    @app.errorhandler(ArchiveError)
    def archive_error(e: ArchiveError):
        count_error(e, "http")
        alert_if_hidden(e)
        response = _error(e.http_status, e.title, e.message)
        if e.http_status == 503:  # an engine restarting, the server busy: worth retrying soon
            response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return _error(e.code or 500, e.name, e.description or e.name)

    @app.errorhandler(Exception)
    def unexpected(e: Exception):
        # Never the exception text: it may quote data-set values.
        count_error(e, "http")
        log.error("unexpected %s in %s %s at %s", type(e).__name__, request.method, request.path,
                  failure_site(e))
        return _error(500, "Internal server error", "unexpected server error; see the server log")

    @app.before_request
    def refuse_while_stopping():
        if drain.draining():  # a request on a kept-alive connection after SIGTERM
            response = _error(503, "Service unavailable", "the server is shutting down")
            response.headers["Connection"] = "close"
            return response
        return None

    @app.before_request
    def refuse_control_characters():
        # Every route's query parameters, before any reaches the catalog: PostgreSQL refuses NUL.
        for name, value in request.args.items(multi=True):
            check_text(f"query parameter {name[:64]!r}", name + value)

    @app.before_request
    def answer_failed_fast_frame():
        error = request.environ.pop(FRAME_ERROR_ENVIRON, None)
        if error is not None:  # a second read would wait out the storage timeout again
            raise error
        return None

    health.register(app)
    metrics.register(app)

    return app


def _register_optional(app: Flask) -> None:
    """Blueprints of the search, AI-results, vendor-import and datasets APIs, when those packages provide them."""
    for name in ("indexer.api", "dicomweb.results", "importer.api", "datasets.api", "datasets.access_api",
                 "datasets.download_api", "web"):
        try:
            module = __import__(name, fromlist=["bp"])
        except ImportError:
            continue
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


def _error(status: int, title: str, message: str):
    response = jsonify(status=status, error=title, message=message)
    response.status_code = status
    return response


def archive() -> Archive:
    return current_app.extensions["archive"]


def settings() -> Settings:
    return current_app.config["SETTINGS"]


def base_url() -> str:
    """The service root as the client reaches it: configured, or from Host / X-Forwarded-*.

    The X-Forwarded-* headers count only from a ``[server] trusted_proxies`` address:
    anyone else could make the archive write their host into BulkDataURIs.
    """
    configured = settings().public_base_url
    if configured:
        return configured.rstrip("/") + SERVICE_ROOT
    forwarded = request.headers if proxied(request.environ) else {}
    proto = forwarded.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    host = forwarded.get("X-Forwarded-Host", request.host).split(",")[0].strip()
    port = request.environ.get("SERVER_PORT", "")
    if "X-Forwarded-Host" not in forwarded and ":" not in host.rsplit("]", 1)[-1] and port not in ("80", "443", ""):
        # A direct client that left the port out of Host (dicomweb-client does) reached us on this port.
        host = f"{host}:{port}"
    prefix = forwarded.get("X-Forwarded-Prefix", "").rstrip("/")
    return f"{proto}://{host}{prefix}{SERVICE_ROOT}"


def proxied(environ: dict) -> bool:
    """Whether the peer is one of the configured reverse proxies (whose X-Forwarded-* headers count)."""
    return settings().is_trusted_proxy(environ.get("REMOTE_ADDR", ""))


def client_address(environ: dict, settings_: Settings) -> str | None:
    """The client's address: the peer's, or behind a trusted proxy the last X-Forwarded-For hop it did not add."""
    peer = environ.get("REMOTE_ADDR")
    if not peer or not settings_.is_trusted_proxy(peer):
        return peer
    hops = [h.strip() for h in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    while hops and settings_.is_trusted_proxy(hops[-1]):
        hops.pop()
    return hops[-1][:64] if hops else peer


#: Where the authentication layer puts the request's principal (an ``archive.auth.access.Principal``).
PRINCIPAL_ENVIRON = "slidearchive.principal"
#: The ArchiveError the single-frame fast path (dicomweb.fastframes) met reading a frame from
#: storage that did not answer: Flask answers the request from it instead of reading again.
FRAME_ERROR_ENVIRON = "slidearchive.frame_error"


def principal() -> Principal:
    """The request's principal, set by the authentication hook (dicomweb.auth) before the view runs."""
    found = request.environ.get(PRINCIPAL_ENVIRON)
    if found is None:
        raise RuntimeError("no principal: the route is public or the authentication hook did not run")
    return found


def audit(event: str, **fields) -> None:
    """Record ``event`` for this request's principal and client address (see archive/audit/trail.py).

    An app without an archive (a blueprint tested on its own) has no audit trail to write to."""
    if "archive" not in current_app.extensions:
        return
    archive().audit.record(event, principal=request.environ.get(PRINCIPAL_ENVIRON),
                           remote=client_address(request.environ, settings()), **fields)


def audit_frames(study: str, series: str, sop: str, frames: int = 1) -> None:
    """Count pixel data sent (frames, rendered images, bulk pixel data): summarised, never one line each."""
    archive().audit.frame(request.environ.get(PRINCIPAL_ENVIRON), study, series, sop,
                          client_address(request.environ, settings()), frames)


def resource_url(study: str, series: str | None = None, sop: str | None = None) -> str:
    url = f"{base_url()}/studies/{study}"
    if series:
        url += f"/series/{series}"
        if sop:
            url += f"/instances/{sop}"
    return url
