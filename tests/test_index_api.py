"""GET /api/search over both backends: JSON, 400 for unanswerable queries, the OpenAPI document."""
from __future__ import annotations

from pathlib import Path

import openapi_spec_validator
import pytest
import yaml
from flask import Flask

from es_node import es_node, make_index  # noqa: F401  (fixtures)
from indexer.api import search_blueprint
from indexer.openapi import document
from indexer.synthetic import documents

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def client(make_index):
    index = make_index()
    index.upsert(list(documents(60)))
    index.refresh()
    app = Flask(__name__)
    app.register_blueprint(search_blueprint(index))
    return app.test_client()


def test_search_returns_hits_facets_and_paging(client):
    r = client.get("/api/search?q=biopsy&facet=scanner.manufacturer&facet=collection&size=5&page=2"
                   "&magnification.gte=20&sort=-study.date")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["page"] == 2 and body["size"] == 5 and len(body["hits"]) <= 5
    assert body["total"] >= len(body["hits"])
    assert set(body["facets"]) == {"scanner.manufacturer", "collection"}
    assert sum(b["count"] for b in body["facets"]["collection"]) == body["total"]
    dates = [h["study"]["date"] for h in body["hits"]]
    assert dates == sorted(dates, reverse=True)
    assert all("qido" not in h for h in body["hits"])


def test_filters_with_repeated_values(client):
    one = client.get("/api/search?scanner.manufacturer=Hamamatsu&size=0").get_json()["total"]
    two = client.get("/api/search?scanner.manufacturer=3DHISTECH&size=0").get_json()["total"]
    both = client.get("/api/search?scanner.manufacturer=Hamamatsu&scanner.manufacturer=3DHISTECH&size=0")
    assert both.get_json()["total"] == one + two


@pytest.mark.parametrize("query, word", [
    ("color=red", "unknown parameter"),
    ("magnification=lots", "number"),
    ("sort=study.description", "cannot sort"),
    ("facet=series_uid", "cannot facet"),
    ("page=200&size=100", "page * size"),
    ("study.date.gte=2020-01-01", "YYYYMMDD"),
    ("pyramid.width_lte=99999999999999999999", "64-bit integer"),  # was a 500 (OverflowError in SQLite)
    ("pyramid.width=-9223372036854775809", "64-bit integer"),
    ("magnification.gte=1e400", "finite number"),
    ("magnification=nan", "finite number"),
])
def test_queries_the_index_cannot_answer_get_400_with_a_message(client, query, word):
    r = client.get(f"/api/search?{query}")
    assert r.status_code == 400
    assert word in r.get_json()["error"]


def test_openapi_is_served_and_matches_the_docs_file(client):
    r = client.get("/api/search/openapi.json")
    assert r.status_code == 200
    assert r.get_json() == document()
    assert yaml.safe_load((REPO / "docs" / "search-openapi.yaml").read_text()) == document(), \
        "regenerate: python -m indexer.openapi > docs/search-openapi.yaml"
    openapi_spec_validator.validate(document())
