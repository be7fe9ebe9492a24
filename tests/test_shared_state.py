"""State several nodes sharing one PostgreSQL catalog rely on, each node a ``Catalog`` of its own
on the real test cluster: result-link repair leased to one node, with a dead node's work
taken over by another."""
from __future__ import annotations

import threading
import time

import pydicom
import pytest

from archive import dicomjson
from archive.auth.access import SYSTEM
from archive.catalog import Catalog, NewInstance
from archive.results import links
from indexer.synthetic import slide_headers


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


def test_a_catalog_from_before_the_leased_repair_links_its_unlinked_results(postgresql_url, shared_data):
    """A catalog from before (a watermark, no link work items) holding a result that was never
    linked: the upgrade queues it, and the next read links it."""
    from archive.catalog import schema

    slide = pydicom.dcmread(shared_data / "sm_image.dcm")
    annotation = pydicom.dcmread(shared_data / "sm_annotations.dcm")
    catalog = Catalog(postgresql_url)
    catalog.add_instance(_new(slide), "c")
    catalog.add_instance(_new(annotation), "c")
    number = next(i + 1 for i, (name, _) in enumerate(schema.MIGRATIONS) if name.startswith("result links repaired"))
    with catalog.transaction() as db:  # back to how version `number - 1` left it
        db.execute("DELETE FROM work_item")
        db.execute("DELETE FROM schema_version WHERE version >= ?", (number,))
    catalog.close()

    upgraded = Catalog(postgresql_url)
    assert schema.version(upgraded.db) == schema.VERSION
    assert links.sync(upgraded) == 1
    assert len(links.results_for_slide(upgraded, str(slide.SeriesInstanceUID), principal=SYSTEM)) == 1
    upgraded.close()
