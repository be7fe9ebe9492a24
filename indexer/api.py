"""``GET /api/search``: a Flask blueprint over whichever Index is configured.

Mount with ``register(app)`` (the index is opened lazily from
``app.config["SETTINGS"]``) or ``app.register_blueprint(search_blueprint(index))``. Errors are JSON
``{"error": message}``: 400 for a query the index cannot answer, 503 (with
Retry-After) when the index is down, slow or shedding load.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

from flask import Blueprint, current_app, jsonify, request

from archive.auth.access import requires

from .base import Index, IndexUnavailable
from .openapi import document
from .search import BadQuery, parse_search

log = logging.getLogger(__name__)


def search_blueprint(index: Index | Callable[[], Index], retry_after: int = 5) -> Blueprint:
    """``index`` may be a callable so the app can open it lazily (per process, after a fork)."""
    bp = Blueprint("slide_search", __name__)
    resolved: dict[str, Index] = {}

    def current() -> Index:
        if "index" not in resolved:
            opened = index() if callable(index) and not hasattr(index, "search") else index
            opened.ensure()  # an archive that never indexed anything answers 0 hits, not 503
            resolved["index"] = opened  # type: ignore[assignment]
        return resolved["index"]

    def error(status: int, message: str) -> Any:
        response = jsonify({"error": message})
        response.status_code = status
        if status == 503:
            response.headers["Retry-After"] = str(retry_after)
        return response

    @bp.get("/api/search")
    @requires("read")
    def search() -> Any:
        try:
            req = parse_search(request.args.items(multi=True))
            req = dataclasses.replace(req, collections=_readable())
            result = current().search(req)
        except BadQuery as e:
            return error(400, str(e))
        except IndexUnavailable as e:
            log.warning("search answered 503: %s", e)
            return error(503, f"the search index is unavailable, retry later ({e})")
        answer = result.to_json(req)
        from dicomweb import audit

        audit("Query", query=request.args.to_dict(flat=False),
              detail={"description": f"search API, {answer.get('total', len(answer.get('hits', [])))} hits"})
        return jsonify(answer)

    @bp.get("/api/search/openapi.json")
    @requires("public")
    def openapi() -> Any:
        return jsonify(document())

    return bp


def _readable() -> tuple[str, ...] | None:
    """The caller's readable collections (None: all), from the principal the archive's
    authentication hook set; a blueprint mounted without that hook (tests) is unrestricted."""
    from dicomweb import PRINCIPAL_ENVIRON

    if "authenticator" not in current_app.extensions:
        return None
    collections = request.environ[PRINCIPAL_ENVIRON].collections("read")
    return None if collections is None else tuple(sorted(collections))


def register(app: Any) -> None:
    """Mount /api/search on the DICOMweb app; opens the configured index on first use in each process."""
    def open_configured() -> Index:
        from .factory import from_settings

        settings = app.config["SETTINGS"]
        return from_settings(getattr(settings, "index", {}), settings.data_dir)[1]

    app.register_blueprint(search_blueprint(open_configured))
