"""State several nodes sharing one PostgreSQL catalog rely on, each node a ``Catalog`` of its own
on the real test cluster: result-link repair leased to one node, with a dead node's work
taken over by another; the index worker's rejected documents and AI references known to the
node that takes the outbox over."""
from __future__ import annotations

import threading
import time
import types

import pydicom
import pytest
import requests

from archive import dicomjson
from archive.auth.access import SYSTEM
from archive.catalog import Catalog, NewInstance
from archive.results import links
from indexer.synthetic import slide_headers

from es_node import es_node  # noqa: F401  (fixture)


def _new(ds) -> NewInstance:
    return NewInstance(ds, "1.2.840.10008.1.2.1", f"sid-{ds.SOPInstanceUID}", 1, "0" * 64,
                       None, None, dicomjson.to_json(ds))


def _waiting_on_a_lock(db, count: int = 1, timeout: float = 20.0) -> None:
    """Until ``count`` sessions of this database wait for a row lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = db.execute("SELECT count(*) FROM pg_stat_activity WHERE datname=current_database() "
                       "AND wait_event_type='Lock'").fetchone()[0]
        if n >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the storing node never reached the study lock")


def test_a_result_whose_node_died_before_linking_is_linked_once_by_another_node(postgresql_url, shared_data,
                                                                                monkeypatch):
    """Node A commits an annotation after node B committed a later instance (PostgreSQL hands out
    keys in one order and commits in another), then dies before linking it. Once A's lease runs
    out, exactly one of the surviving nodes links it, however many read at once."""
    monkeypatch.setattr(links, "LINK_LEASE", 1.0, raising=False)
    slide = pydicom.dcmread(shared_data / "sm_image.dcm")
    annotation = pydicom.dcmread(shared_data / "sm_annotations.dcm")
    node_a, node_b, node_c = (Catalog(postgresql_url) for _ in range(3))
    node_b.add_instance(_new(slide), "c")
    series = str(slide.SeriesInstanceUID)

    # holds the study row A locks last (Catalog._recount); A's earlier foreign-key checks pass it
    with node_c.transaction() as holder:
        holder.execute("SELECT pk FROM study WHERE study_instance_uid=? FOR NO KEY UPDATE",
                       (str(slide.StudyInstanceUID),))
        storing = threading.Thread(target=node_a.add_instance, args=(_new(annotation), "c"))
        storing.start()
        _waiting_on_a_lock(node_b.db)  # A's instance row has its key, uncommitted
        node_b.add_instance(_new(slide_headers(1)[0]), "c")  # a later key, committed first
        assert links.sync(node_b) == 0
        assert links.results_for_slide(node_b, series, principal=SYSTEM) == []
    storing.join(20)
    assert not storing.is_alive()
    node_a.close()  # node A dies here, before links.record

    assert links.sync(node_b) == 0  # A's lease has not run out: A may still be linking it
    time.sleep(1.2)
    counts: list[int] = []
    readers = [threading.Thread(target=lambda n=n: counts.append(links.sync(n))) for n in (node_b, node_c)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(20)
    assert sorted(counts) == [0, 1]  # one node linked it, the other found nothing to do
    [found] = links.results_for_slide(node_c, series, principal=SYSTEM)
    assert found["kind"] == "ANN" and found["sop_instance"] == str(annotation.SOPInstanceUID)
    assert node_b.db.execute("SELECT count(*) FROM work_item WHERE kind=?", (links.LINK_WORK,)).fetchone()[0] == 0
    node_b.close()
    node_c.close()


def test_a_result_linked_by_its_node_leaves_no_work(postgresql_url, shared_data):
    slide = pydicom.dcmread(shared_data / "sm_image.dcm")
    annotation = pydicom.dcmread(shared_data / "sm_annotations.dcm")
    catalog = Catalog(postgresql_url)
    catalog.add_instance(_new(slide), "c")
    catalog.add_instance(_new(annotation), "c")
    [(owner, until)] = catalog.db.execute("SELECT owner, lease_until FROM work_item WHERE kind=?",
                                          (links.LINK_WORK,)).fetchall()
    assert owner == catalog.node and until > time.time()
    links.record(catalog, annotation)
    assert catalog.db.execute("SELECT count(*) FROM work_item").fetchone()[0] == 0
    assert len(links.results_for_slide(catalog, str(slide.SeriesInstanceUID), principal=SYSTEM)) == 1
    catalog.close()


def test_a_catalog_from_before_the_leased_repair_links_its_unlinked_results(postgresql_url, shared_data, monkeypatch):
    """A catalog of the version before (a watermark, no link work items) holding a result that was
    never linked: the upgrade queues it, and the next read links it."""
    from archive.catalog import core, schema

    number = next(i + 1 for i, (name, _) in enumerate(schema.MIGRATIONS) if name.startswith("result links repaired"))
    slide = pydicom.dcmread(shared_data / "sm_image.dcm")
    annotation = pydicom.dcmread(shared_data / "sm_annotations.dcm")
    with monkeypatch.context() as previous:  # this code on the schema the version before left
        previous.setattr(core, "migrate", lambda db: schema.migrate(db, target=number - 1))
        catalog = Catalog(postgresql_url)
        assert schema.version(catalog.db) == number - 1
        catalog.add_instance(_new(slide), "c")
        catalog.add_instance(_new(annotation), "c")
        catalog.db.execute("DELETE FROM work_item")  # that version wrote none
        catalog.close()

    upgraded = Catalog(postgresql_url)
    assert schema.version(upgraded.db) == schema.VERSION
    assert links.sync(upgraded) == 1
    assert len(links.results_for_slide(upgraded, str(slide.SeriesInstanceUID), principal=SYSTEM)) == 1
    upgraded.close()


@pytest.mark.elasticsearch
def test_the_node_taking_over_the_outbox_knows_the_dead_nodes_rejected_documents_and_ai_references(
        postgresql_url, es_node, tmp_path, monkeypatch):
    """Two index workers (two nodes, each with its own state file) on one PostgreSQL catalog and one
    Elasticsearch index. Node 0 holds the outbox, sees one document rejected and indexes a slide's
    annotation, then dies. Node 1 takes over: it retries the rejected document once the fix is
    deployed, and when the annotation is deleted it rebuilds the slide's AI summary."""
    from es_node import elastic_index

    from indexer import worker as worker_module
    from indexer.state import open_state
    from indexer.synthetic import annotation_headers
    from indexer.worker import IndexWorker

    monkeypatch.setattr(worker_module, "LEASE_SECONDS", 2.0)
    index = elastic_index(es_node.url)
    index.ensure()
    catalogs = [Catalog(postgresql_url), Catalog(postgresql_url)]
    workers = [IndexWorker(c, index, open_state(types.SimpleNamespace(path=tmp_path / f"state{i}.sqlite"), c, index))
               for i, c in enumerate(catalogs)]
    bad, slide = slide_headers(1, seed=4), slide_headers(2, seed=4)
    annotation = annotation_headers(slide, 1)
    real_build = worker_module.build_document

    def broken_build(h, collection=None, ai=()):
        doc = real_build(h, collection, ai)
        if doc["series_uid"] == bad[0].SeriesInstanceUID:
            doc["pyramid"]["width"] = "not a number"  # a builder bug the mapping refuses
        return doc

    monkeypatch.setattr(worker_module, "build_document", broken_build)
    for ds in bad + slide + annotation:
        catalogs[0].add_instance(_new(ds), "c")
    workers[0].catch_up()
    assert workers[1].step() == 0  # node 0 holds the outbox
    index.refresh()
    assert index.get(bad[0].SeriesInstanceUID) is None
    assert index.get(slide[0].SeriesInstanceUID)["ai"]["present"] is True

    monkeypatch.setattr(worker_module, "build_document", real_build)  # the fix is deployed; node 0 is gone
    catalogs[0].delete(annotation[0].StudyInstanceUID, annotation[0].SeriesInstanceUID, principal=SYSTEM)
    time.sleep(2.2)  # node 0's lease runs out
    workers[1].catch_up()
    index.refresh()
    assert index.get(bad[0].SeriesInstanceUID) is not None  # retried by the node that took over
    assert index.get(slide[0].SeriesInstanceUID)["ai"]["present"] is False  # it knew the slide's annotation
    assert workers[1].state.failures() == {}
    index.es.indices.delete(index=f"{index.alias}*", ignore_unavailable=True)
    index.close()
    for c in catalogs:
        c.close()


def _ready(server) -> dict:
    return requests.get(f"{server.url}/health/ready", timeout=10).json()["components"]


def test_nodes_with_different_move_destinations_report_it_on_health_ready(postgresql_url, tmp_path):
    """C-MOVE destinations stay configuration, the same file on every node; two real nodes sharing a
    PostgreSQL catalog whose [[dimse.remote]] tables differ both say so on /health/ready (degraded:
    still ready), naming the other node, and agree once the odd one runs the common file."""
    from conftest import Server

    from nodes import wait_for

    shared = f'\n[catalog]\nurl = "{postgresql_url}"\n'
    remote = '\n[[dimse.remote]]\nae_title = "VIEWER"\nhost = "127.0.0.1"\nport = {}\n'
    first = Server(tmp_path / "node1", shared + remote.format(11001)).start()
    second = Server(tmp_path / "node2", shared + remote.format(11002)).start()
    try:
        for node in (first, second):
            seen = wait_for(lambda node=node: (c := _ready(node)["configuration"]).get("differing") and c,
                            timeout=60, what="the other node's different configuration")
            assert seen["status"] == "degraded" and len(seen["differing"]) == 1
            assert "[[dimse.remote]]" in seen["detail"]
        assert requests.get(f"{first.url}/health/ready", timeout=10).status_code == 200
        second.stop()  # a node stopping withdraws its digest
        second = Server(tmp_path / "node2b", shared + remote.format(11001)).start()
        for node in (first, second):
            wait_for(lambda node=node: _ready(node)["configuration"]["status"] == "ok", timeout=60,
                     what="the nodes agreeing")
    finally:
        first.stop()
        second.stop()



@pytest.mark.elasticsearch
def test_a_reindex_on_one_node_rewinds_the_shared_cursor_so_nothing_stored_meanwhile_is_lost(
        postgresql_url, es_node, tmp_path):
    """Node 1 rebuilds the Elasticsearch index while node 0 holds the outbox; a slide stored during
    the rebuild goes to the old generation only. The rebuild rewinds the cursor in the shared lease
    (not only in node 1's file), so node 0 applies that slide again to the new generation. Every
    node reports the holder's cursor (the outbox lag /metrics shows)."""
    from es_node import elastic_index

    from indexer.reindex import reindex
    from indexer.state import open_state
    from indexer.worker import IndexWorker

    index = elastic_index(es_node.url)
    index.ensure()
    catalogs = [Catalog(postgresql_url), Catalog(postgresql_url)]
    states = [open_state(types.SimpleNamespace(path=tmp_path / f"state{i}.sqlite"), c, index)
              for i, c in enumerate(catalogs)]
    holder = IndexWorker(catalogs[0], index, states[0])
    first, later = slide_headers(1, seed=6), slide_headers(2, seed=6)
    for ds in first:
        catalogs[0].add_instance(_new(ds), "c")
    holder.catch_up()
    assert states[1].cursor(index.name) == states[0].cursor(index.name) > 0  # node 1 reports the holder's

    class StoreDuringTheRebuild:  # reindex's progress hook: runs between its batches
        def __init__(self, total):
            pass

        def update(self, n):
            for ds in later:
                catalogs[1].add_instance(_new(ds), "c")
            holder.catch_up()  # into the old generation, the alias's write index until the swap

        def close(self):
            pass

    assert reindex(catalogs[1], index, states[1], progress=StoreDuringTheRebuild) == 1
    index.refresh()
    assert index.get(later[0].SeriesInstanceUID) is None  # the new generation missed it...
    holder.catch_up()
    index.refresh()
    assert index.get(later[0].SeriesInstanceUID) is not None  # ...until the holder applied it again
    assert index.get(first[0].SeriesInstanceUID) is not None
    index.es.indices.delete(index=f"{index.alias}*", ignore_unavailable=True)
    index.close()
    for c in catalogs:
        c.close()
