"""DICOMweb (PS3.18) over the archive: a Flask app factory.

Service root ``/dicomweb``. Every error answers JSON ``{"status", "error", "message"}``
from the one error table in ``archive.errors``; unexpected failures answer a
generic 500 without the exception text (which may hold data-set values).
"""
from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from archive.config import Settings
from archive.errors import ArchiveError
from archive.service import Archive

log = logging.getLogger(__name__)
SERVICE_ROOT = "/dicomweb"


def create_app(settings: Settings, archive: Archive | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.extensions["archive"] = archive or Archive(settings)
    from .fastframes import FastFrames

    app.wsgi_app = FastFrames(app.wsgi_app, app.extensions["archive"])

    from . import qido, stow, wado

    for module in (stow, qido, wado):
        app.register_blueprint(module.bp, url_prefix=SERVICE_ROOT)
    _register_optional(app)

    @app.errorhandler(ArchiveError)
    def archive_error(e: ArchiveError):
        return _error(e.http_status, e.title, e.message)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return _error(e.code or 500, e.name, e.description or e.name)

    @app.errorhandler(Exception)
    def unexpected(e: Exception):
        # Never the exception text: it may quote data-set values.
        log.error("unexpected %s in %s %s", type(e).__name__, request.method, request.path)
        return _error(500, "Internal server error", "unexpected server error; see the server log")

    @app.after_request
    def cors(response):
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Accept, Content-Type, Range, Authorization"
        response.headers["Access-Control-Expose-Headers"] = "Content-Type, Content-Length, Content-Range, Content-Location, Warning"
        return response

    @app.get("/health")
    def health():
        return jsonify(status="ok")

    return app


def _register_optional(app: Flask) -> None:
    """Blueprints of the search and AI-results APIs, when those packages provide them."""
    for name in ("indexer.api", "dicomweb.results"):
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
    """The service root as the client reaches it: configured, or from Host / X-Forwarded-*."""
    configured = settings().public_base_url
    if configured:
        return configured.rstrip("/") + SERVICE_ROOT
    proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
    port = request.environ.get("SERVER_PORT", "")
    if "X-Forwarded-Host" not in request.headers and ":" not in host.rsplit("]", 1)[-1] and port not in ("80", "443", ""):
        # A direct client that left the port out of Host (dicomweb-client does) reached us on this port.
        host = f"{host}:{port}"
    prefix = request.headers.get("X-Forwarded-Prefix", "").rstrip("/")
    return f"{proto}://{host}{prefix}{SERVICE_ROOT}"


def resource_url(study: str, series: str | None = None, sop: str | None = None) -> str:
    url = f"{base_url()}/studies/{study}"
    if series:
        url += f"/series/{series}"
        if sop:
            url += f"/instances/{sop}"
    return url
