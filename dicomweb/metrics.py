"""``GET /metrics``: the node's Prometheus text exposition (archive.metrics), for a scraper.

Who may scrape: an administrator (any credential the archive accepts with admin), or,
when ``[metrics] token_file`` names a file, whoever presents its content as
``Authorization: Bearer`` (Prometheus' ``authorization.credentials_file``), so that the
scraper holds no credential that could read slides. ``[metrics] enabled = false`` turns the
route off (404). With authentication off, as every route, it is open (loopback only).
"""
from __future__ import annotations

import os

from flask import Flask, Response, request

from archive import metrics
from archive.auth.access import requires
from archive.lifecycle import SUPERVISOR_ENV
from archive.logs import ROUTE_ENVIRON


def register(app: Flask) -> None:
    from . import PRINCIPAL_ENVIRON, _error, settings

    metrics.metrics()  # made before the worker's threads serve anything

    @app.url_value_preprocessor
    def remember_route(endpoint, values):
        """The matched rule (a template such as /dicomweb/studies/<study>), before any hook can answer."""
        if request.url_rule is not None:
            request.environ[ROUTE_ENVIRON] = request.url_rule.rule

    @app.get("/metrics")
    @requires("admin")
    def scrape():
        config = settings().metrics
        if not config.enabled:
            return _error(404, "Not found", "metrics are turned off ([metrics] enabled = false)")
        who = request.environ.get(PRINCIPAL_ENVIRON)  # None: the scrape token was presented
        if who is not None and not who.admin:
            return _error(403, "Forbidden", "metrics need an administrator of the archive (not of one "
                          "collection) or the [metrics] scrape token")
        supervisor = os.environ.get(SUPERVISOR_ENV)
        body = metrics.exposition(settings().data_dir, int(supervisor) if supervisor else None)
        return Response(body, content_type=metrics.CONTENT_TYPE)

    def scrape_token(environ: dict) -> bool:
        """The ``[metrics] token_file`` token instead of an administrator's credential."""
        scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
        return scheme.lower() == "bearer" and metrics.token_matches(
            value.strip(), settings().metrics.token_path(settings().data_dir))

    scrape.other_credential = scrape_token
