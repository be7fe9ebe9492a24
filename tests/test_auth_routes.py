"""Deny by default: every route of the app declares what it needs, and none answers data without a principal.

Walks Flask's URL map, so a route added later without ``@requires(...)`` fails here.
"""
from __future__ import annotations

import dataclasses

import pytest

from archive.auth.access import REQUIREMENTS
from archive.config import load_settings

UID = "1.2.3.4"
VALUES = {"study": UID, "series": UID, "sop": UID, "frames": "1", "path": "7FE00010", "job": "0" * 32, "dataset_id": "ds",
          "version": 1, "name": "dicomweb-client", "app_id": "app-0000000000000000", "action": "approve", "fmt": "tar"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    import dicomweb

    settings = load_settings(None, data_dir=str(tmp_path_factory.mktemp("routes") / "data"))
    assert settings.auth.enabled  # the default
    return dicomweb.create_app(settings)


def _rules(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule, method


def test_every_route_declares_its_requirement(app):
    undeclared = [rule.rule for rule, _ in _rules(app)
                  if getattr(app.view_functions[rule.endpoint], "required", None) not in REQUIREMENTS]
    assert undeclared == []


PUBLIC_ROUTES = ("/health", "/health/live", "/health/ready", "/api/search/openapi.json",
                 # released datasets' metadata, for catalogues to harvest (the data and manifests are not)
                 "/api/datasets", "/api/datasets/<dataset_id>", "/api/datasets/<dataset_id>/releases/<int:version>",
                 *(f"/api/datasets/<dataset_id>/releases/<int:version>/{kind}" for kind in ("jsonld", "datacite",
                                                                                           "citation")),
                 "/datasets", "/datasets/<dataset_id>", "/datasets/<dataset_id>/v<int:version>",
                 # the public key of the dataset grants' GA4GH visas, for services that verify them
                 "/api/datasets/visas/jwks.json",
                 # the web app's static files and page shells: a page's data is fetched with the user's token
                 "/static/<path:path>", "/static/vendor/<name>/<path:path>", "/slides/<series>", "/compare",
                 "/", "/login/callback")


def test_no_route_answers_without_a_principal(app):
    client = app.test_client()
    checked = 0
    for rule, method in _rules(app):
        _, path = rule.build(VALUES, append_unknown=False)
        required = app.view_functions[rule.endpoint].required
        response = client.open(path, method=method, headers={"Accept": "*/*"})
        if required == "public":
            # liveness and readiness are for load balancers: component states, no data
            assert rule.rule in PUBLIC_ROUTES, f"{rule.rule} is public"
            continue
        checked += 1
        assert response.status_code == 401, (method, rule.rule, response.status_code)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert checked >= 25


def test_a_route_without_a_declaration_is_refused(app, tmp_path):
    import dicomweb

    settings = dataclasses.replace(app.config["SETTINGS"], data_dir=tmp_path / "data")
    fresh = dicomweb.create_app(settings)

    @fresh.get("/api/undeclared")
    def undeclared():
        return "data"

    assert fresh.test_client().get("/api/undeclared").status_code == 403


@pytest.mark.parametrize("text, message", [
    ('[server]\nhost = "0.0.0.0"\n[auth]\nenabled = false\n', "only when the server binds loopback"),
    ('[[auth.issuer]]\nissuer = "https://idp.example"\naudience = ["x"]\nalgorithms = ["HS256"]\n', "not allowed"),
    ('[[auth.issuer]]\nissuer = "https://idp.example"\n', r"needs issuer \(a URL\) and audience"),
    ('[[auth.visa_issuer]]\nissuer = "https://v.example"\njku = ["https://v.example/jwks"]\n', "collections"),
    ('[auth]\ntoken_cache_seconds = 99999\n', "token_cache_seconds"),
    ('[auth]\nanonymus = true\n', "unknown keys: anonymus"),
])
def test_auth_configuration_mistakes_are_named(tmp_path, text, message):
    from archive.config import ConfigError

    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, data_dir=str(tmp_path / "data"))
