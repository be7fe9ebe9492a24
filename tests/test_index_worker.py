"""The outbox worker and reindex against a real catalog, on both backends."""
from __future__ import annotations

import logging

import pytest

from archive.auth.access import SYSTEM

from es_node import es_node, make_index, store_series  # noqa: F401  (fixtures)
from indexer import worker as worker_module
from indexer.reindex import reindex
from indexer.search import parse_search
from indexer.state import IndexState
from indexer.synthetic import annotation_headers, slide_headers
from indexer.worker import IndexWorker


@pytest.fixture
def setup(make_index, tmp_path):
    from archive.catalog import Catalog

    catalog = Catalog(tmp_path / "catalog.sqlite")
    index = make_index()
    state = IndexState(tmp_path / "state.sqlite")
    yield catalog, index, state, IndexWorker(catalog, index, state, batch_size=7)
    catalog.close()
    state.close()


def test_worker_indexes_new_series_and_follows_ai_results(setup):
    catalog, index, state, worker = setup
    slides = [slide_headers(n) for n in range(6)]
    for i, h in enumerate(slides):
        store_series(catalog, h, f"col{i % 2}")
    assert worker.catch_up() == sum(len(h) for h in slides)
    index.refresh()
    assert index.count() == 6
    doc = index.get(slides[0][0].SeriesInstanceUID)
    assert doc["collection"] == "col0" and doc["ai"]["present"] is False

    ann = annotation_headers(slides[0], 1)
    store_series(catalog, ann, "col0")
    worker.catch_up()
    index.refresh()
    doc = index.get(slides[0][0].SeriesInstanceUID)
    assert doc["ai"]["present"] is True and doc["ai"]["annotation_count"] == 302
    assert index.get(ann[0].SeriesInstanceUID)["kind"] == "annotation"
    assert index.search(parse_search([("ai.algorithms", "NucleiNet")])).total == 1

    catalog.delete(ann[0].StudyInstanceUID, ann[0].SeriesInstanceUID, principal=SYSTEM)
    worker.catch_up()
    index.refresh()
    assert index.get(ann[0].SeriesInstanceUID) is None
    assert index.get(slides[0][0].SeriesInstanceUID)["ai"]["present"] is False


def test_a_slide_and_its_annotation_in_one_batch_give_the_slide_its_ai_summary(setup):
    """The slide's document is built before the annotation naming it is read: it is built again."""
    catalog, index, state, worker = setup
    slide = slide_headers(0)
    store_series(catalog, slide)
    store_series(catalog, annotation_headers(slide, 1))
    worker.catch_up()
    index.refresh()
    assert index.get(slide[0].SeriesInstanceUID)["ai"]["present"] is True


def test_deletes_propagate_and_partial_deletes_update(setup):
    catalog, index, state, worker = setup
    slides = [slide_headers(n) for n in range(4)]
    for h in slides:
        store_series(catalog, h)
    worker.catch_up()
    gone = slides[1][0]
    catalog.delete(gone.StudyInstanceUID, gone.SeriesInstanceUID, principal=SYSTEM)
    part = slides[2]
    catalog.delete(part[0].StudyInstanceUID, part[0].SeriesInstanceUID, part[-1].SOPInstanceUID, principal=SYSTEM)
    worker.catch_up()
    index.refresh()
    assert index.get(gone.SeriesInstanceUID) is None
    assert index.get(part[0].SeriesInstanceUID)["instance_count"] == len(part) - 1
    assert index.count() == 3


def test_reindex_rebuilds_from_the_catalog_and_rewinds_the_cursor(setup, capsys):
    catalog, index, state, worker = setup
    slides = [slide_headers(n) for n in range(10)]
    for h in slides:
        store_series(catalog, h)
    store_series(catalog, annotation_headers(slides[3], 1))
    worker.catch_up()
    cursor = state.cursor(index.name)
    index.delete([slides[5][0].SeriesInstanceUID])  # drift the index away from the catalog
    index.refresh()
    assert index.count() == 10
    n = reindex(catalog, index, state, batch_size=4)
    index.refresh()
    assert n == 11 and index.count() == 11
    assert index.get(slides[5][0].SeriesInstanceUID) is not None
    assert index.get(slides[3][0].SeriesInstanceUID)["ai"]["present"] is True  # annotation came later in order
    assert state.cursor(index.name) == cursor
    assert "11/11 series" in capsys.readouterr().err


def test_rejected_document_is_logged_kept_and_retried_after_a_fix(setup, monkeypatch, caplog):
    catalog, index, state, worker = setup
    headers = slide_headers(1)
    bad_uid = headers[0].SeriesInstanceUID
    real_build = worker_module.build_document

    def broken_build(h, collection=None, ai=()):
        doc = real_build(h, collection, ai)
        if doc["series_uid"] == bad_uid:
            doc["pyramid"]["width"] = "not a number"  # a builder bug the mapping refuses
        return doc

    monkeypatch.setattr(worker_module, "build_document", broken_build)
    store_series(catalog, headers)
    store_series(catalog, slide_headers(2))
    with caplog.at_level(logging.WARNING, logger="indexer.worker"):
        worker.catch_up()
    index.refresh()
    assert index.get(bad_uid) is None and index.count() == 1
    assert list(state.failures()) == [bad_uid]
    assert bad_uid in caplog.text
    assert str(headers[0].PatientName).split("^")[0] not in caplog.text
    assert state.cursor(index.name) > 0  # the outbox moved on: one bad document blocks nothing

    monkeypatch.setattr(worker_module, "build_document", real_build)  # the fix is deployed...
    restarted = IndexWorker(catalog, index, state)  # ...and the worker restarts
    restarted.step()
    index.refresh()
    assert index.get(bad_uid) is not None
    assert state.failures() == {}


def test_reindex_command_and_search_route_in_the_archive_app(tmp_path, capsys):
    """`slidearchive reindex` (archive/cli.py registers it) and /api/search mounted by dicomweb.create_app."""
    from archive.catalog import Catalog
    import dataclasses

    from archive.cli import main
    from archive.config import AuthSettings, load_settings

    settings = load_settings(None, data_dir=str(tmp_path / "data"))
    settings = dataclasses.replace(settings, auth=AuthSettings(enabled=False))  # not an access-control test
    catalog = Catalog(settings.catalog_path)
    for n in range(5):
        store_series(catalog, slide_headers(n))
    catalog.close()
    assert main(["reindex", "--data-dir", str(settings.data_dir), "--no-progress"]) == 0
    assert "indexed 5 series" in capsys.readouterr().out

    import dicomweb

    app = dicomweb.create_app(settings)
    body = app.test_client().get("/api/search?facet=collection").get_json()
    assert body["total"] == 5 and body["facets"]["collection"] == [{"value": "c", "count": 5}]


def test_worker_process_entry_point_follows_the_catalog(tmp_path):
    """indexer.worker.run(settings): what `slidearchive serve` spawns; SIGTERM stops it cleanly."""
    import multiprocessing
    import time

    from archive.catalog import Catalog
    from archive.config import load_settings
    from indexer.embedded import EmbeddedIndex

    settings = load_settings(None, data_dir=str(tmp_path / "data"))
    catalog = Catalog(settings.catalog_path)
    process = multiprocessing.get_context("spawn").Process(target=worker_module.run, args=(settings,))
    process.start()
    try:
        for n in range(3):
            store_series(catalog, slide_headers(n))
        index = EmbeddedIndex(settings.data_dir / "index.sqlite")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and index.count() < 3:
            time.sleep(0.2)
        assert index.count() == 3
        index.close()
    finally:
        process.terminate()
        process.join(20)
        catalog.close()
    assert process.exitcode == 0
