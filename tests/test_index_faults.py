"""Faults with a real node: it goes down, the archive goes on, the index catches up; searches answer 503."""
from __future__ import annotations

import time

import pytest
from flask import Flask

from es_node import EsNode, elastic_index, require_runner, store_series
from indexer.api import search_blueprint
from indexer.base import IndexUnavailable
from indexer.documents import build_document
from indexer.state import IndexState
from indexer.synthetic import slide_headers
from indexer.worker import IndexWorker

pytestmark = pytest.mark.elasticsearch


@pytest.fixture
def node(tmp_path_factory):
    """A node of its own: these tests stop it."""
    require_runner()
    n = EsNode(tmp_path_factory.mktemp("es-faults"), heap="512m").start()
    yield n
    n.stop()


def _app(index):
    app = Flask(__name__)
    app.register_blueprint(search_blueprint(index))
    return app.test_client()


def test_node_down_worker_keeps_events_and_catches_up(node, tmp_path):
    from archive.catalog import Catalog

    catalog = Catalog(tmp_path / "catalog.sqlite")
    state = IndexState(tmp_path / "state.sqlite")
    index = elastic_index(node.url, request_timeout=5)
    worker = IndexWorker(catalog, index, state, batch_size=50, poll_interval=0.1, max_backoff=1.0)
    for n in range(3):
        store_series(catalog, slide_headers(n))
    worker.catch_up()
    cursor = state.cursor(index.name)
    client = _app(index)
    assert client.get("/api/search").status_code == 200

    node.stop()
    started = time.monotonic()
    for n in range(3, 8):  # ingest goes on while the index is down
        store_series(catalog, slide_headers(n))
    assert time.monotonic() - started < 5
    with pytest.raises(IndexUnavailable):
        worker.step()
    assert state.cursor(index.name) == cursor  # nothing consumed, nothing lost
    r = client.get("/api/search?q=kidney")
    assert r.status_code == 503 and "unavailable" in r.get_json()["error"]
    assert r.headers["Retry-After"]

    thread = worker.start()  # the background loop retries with back-off...
    time.sleep(1.5)
    assert thread.is_alive() and worker.last_error
    node.start()  # ...and catches up once the node is back (same data directory)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            index.refresh()
            if index.count() == 8:
                break
        except IndexUnavailable:
            pass
        time.sleep(0.5)
    worker.stop()
    assert index.count() == 8
    assert state.cursor(index.name) > cursor
    assert client.get("/api/search").get_json()["total"] == 8
    catalog.close()
    state.close()
    index.close()


def test_slow_index_answers_503(node):
    index = elastic_index(node.url, request_timeout=0.001)
    r = _app(index).get("/api/search?q=liver&facet=collection")
    assert r.status_code == 503
    index.close()


def test_unreachable_index_answers_503():
    dead = elastic_index("http://127.0.0.1:9")  # nothing listens on the discard port
    assert _app(dead).get("/api/search").status_code == 503
    dead.close()


def test_overloaded_node_429_answers_503(node):
    """A real 429: the node's request circuit breaker trips (limit lowered on purpose)."""
    index = elastic_index(node.url)
    index.ensure()
    index.upsert([build_document(slide_headers(1), "c")])
    index.refresh()
    client = _app(index)
    assert client.get("/api/search?facet=collection").status_code == 200
    index.es.cluster.put_settings(persistent={"indices.breaker.request.limit": "1b"})
    try:
        r = client.get("/api/search?facet=collection&facet=scanner.model")
        assert r.status_code == 503, r.get_json()
    finally:
        index.es.cluster.put_settings(persistent={"indices.breaker.request.limit": None})
    assert client.get("/api/search?facet=collection").status_code == 200
    index.close()
