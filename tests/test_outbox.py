"""The catalog's outbox is read in commit order: a consumer following its cursor never skips an event.

On PostgreSQL two ingest transactions run at once; the one that drew the lower outbox number may
commit after the other's event was already read. Here that happens for real: a test-only deferred
trigger holds the first ingest's COMMIT (it waits on an advisory lock the test holds) while a second
ingest commits and the index worker applies it; then the first commits. Its slide must reach the
index all the same.
"""
from __future__ import annotations

import threading
import time

import psycopg
import pytest

from archive.catalog import Catalog, schema
from archive.catalog.database import open_database
from es_node import store_series
from indexer.embedded import EmbeddedIndex
from indexer.state import IndexState
from indexer.synthetic import slide_headers
from indexer.worker import IndexWorker
from nodes import wait_for

#: Holds the COMMIT of an ingest whose outbox event names the series in ``held_series``.
HOLD_COMMIT = """
CREATE TABLE held_series (series_uid TEXT PRIMARY KEY);
CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM held_series WHERE series_uid = NEW.series_uid) THEN
        PERFORM pg_advisory_xact_lock_shared(hashtext('hold commit'));
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON outbox DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION hold_commit();
"""


def _follow(catalog: Catalog, cursor: int) -> tuple[int, list[str]]:
    """What a consumer reads after ``cursor``: (its new cursor, the events' series UIDs)."""
    events = catalog.outbox_after(cursor, 1000)
    return (events[-1].seq if events else cursor), [e.series_uid for e in events]


def _blocked_on_advisory_lock(conn: psycopg.Connection) -> bool:
    return bool(conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                .fetchone()[0])


def test_an_ingest_committing_after_a_later_one_was_indexed_is_not_skipped(postgresql_url, tmp_path):
    catalog = Catalog(postgresql_url)
    index = EmbeddedIndex(tmp_path / "index.sqlite")
    index.ensure()
    state = IndexState(tmp_path / "state.sqlite")
    worker = IndexWorker(catalog, index, state)
    # other patients and collections: the first ingest's new rows would hold the second one up
    slow, quick = slide_headers(1, seed=31, patient=1), slide_headers(2, seed=32, patient=2)
    holder = psycopg.connect(postgresql_url, autocommit=True)
    holder.execute(HOLD_COMMIT)
    holder.execute("INSERT INTO held_series VALUES (%s)", (str(slow[0].SeriesInstanceUID),))
    holder.execute("SELECT pg_advisory_lock(hashtext('hold commit'))")
    try:
        ingest = threading.Thread(target=store_series, args=(catalog, slow[:1]))
        ingest.start()  # draws its outbox number, then waits at COMMIT
        wait_for(lambda: _blocked_on_advisory_lock(holder), 30, what="the first ingest to wait at COMMIT")
        store_series(catalog, quick, collection="quick")  # higher outbox numbers, committed first
        worker.catch_up()
        index.refresh()
        assert index.get(str(quick[0].SeriesInstanceUID)) is not None
    finally:
        holder.execute("SELECT pg_advisory_unlock(hashtext('hold commit'))")
    ingest.join(30)
    assert not ingest.is_alive()
    worker.catch_up()
    index.refresh()
    assert index.get(str(slow[0].SeriesInstanceUID)) is not None, "the later-committed slide was skipped"
    assert index.count() == 2
    holder.close()
    index.close()
    state.close()
    catalog.close()


def test_two_concurrent_transactions_both_reach_a_cursor_reader(postgresql_url):
    """The same at the outbox's own interface: transaction A draws the lower number and commits
    last; following the cursor (read between the commits) yields both events, each once."""
    catalog = Catalog(postgresql_url)
    a, b = slide_headers(1, seed=33)[:1], slide_headers(1, seed=34)[:1]
    first = psycopg.connect(postgresql_url)  # a transaction of its own, left open
    first.execute("INSERT INTO outbox(event, study_uid, series_uid, sop_instance_uid, created_at) "
                  "VALUES ('stored', %s, %s, %s, %s)",
                  (str(a[0].StudyInstanceUID), str(a[0].SeriesInstanceUID), str(a[0].SOPInstanceUID), time.time()))
    store_series(catalog, b)  # its event's number is above A's, and it commits first
    cursor, seen = _follow(catalog, 0)
    assert seen == [str(b[0].SeriesInstanceUID)]
    first.commit()
    first.close()
    cursor, more = _follow(catalog, cursor)
    assert more == [str(a[0].SeriesInstanceUID)]
    assert _follow(catalog, cursor)[1] == []
    catalog.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    return tmp_path / "catalog.sqlite" if request.param == "sqlite" else request.getfixturevalue("postgresql_url")


def test_cursors_of_an_upgraded_catalog_stay_valid(location):
    """Events written before positions existed keep their old numbers as positions, so a consumer's
    saved cursor means the same after the upgrade; new events come after them."""
    db = open_database(location)
    schema.migrate(db, target=schema.OUTBOX_POSITIONS - 1)
    with db.transaction() as s:
        for n in range(3):
            s.execute("INSERT INTO outbox(event, series_uid, created_at) VALUES ('stored', ?, ?)", (f"old{n}", 1.0))
    old = [r[0] for r in db.execute("SELECT seq FROM outbox ORDER BY seq").fetchall()]
    db.close()
    catalog = Catalog(location)
    assert [(e.seq, e.series_uid) for e in catalog.outbox_after(0)] == [(s, f"old{n}") for n, s in enumerate(old)]
    assert [e.series_uid for e in catalog.outbox_after(old[1])] == ["old2"]
    new = slide_headers(1, seed=35)[:1]
    store_series(catalog, new)
    assert [e.series_uid for e in catalog.outbox_after(old[2])] == [str(new[0].SeriesInstanceUID)]
    assert catalog.outbox_pending(old[2])[0] == 1
    catalog.close()


def test_lag_counts_events_not_yet_read_in_commit_order(location):
    catalog = Catalog(location)
    store_series(catalog, slide_headers(3, seed=36))
    events = len(slide_headers(3, seed=36))
    lag, oldest = catalog.outbox_pending(0)
    assert lag == events and oldest is not None
    cursor, _ = _follow(catalog, 0)
    assert catalog.outbox_pending(cursor) == (0, None)
    catalog.close()
