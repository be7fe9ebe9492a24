"""Studies counted per block of primary keys, so a deep QIDO page starts near its row.

``OFFSET n`` makes an engine walk and drop n index entries: at a million studies a page
from the second half cost 30-70 ms however the query is written. The table
``study_tally`` (schema migration 6) holds signed counts per (collection, block of
``BLOCK`` study keys), written by triggers on ``study`` and ``study_collection`` whoever
inserts or deletes (ingest, delete, dataset releases, bulk loads); collection ``''``
counts every study. A page at offset n then sums the blocks (about studies / ``BLOCK``
rows), starts at the first key of the block holding row n and skips fewer than
``BLOCK`` rows: the same rows in the same order as ``OFFSET n``, read in one statement
(one snapshot). Collection names are 1-64 characters, so ``''`` is no collection.

The triggers only append (no row every writer updates, so nodes do not queue behind
one another); ``compact`` folds the appended rows into one per block now and then.
"""
from __future__ import annotations

from archive.catalog.database import Database

#: Study keys per block: a deep page skips fewer than this many rows (migration 6's triggers
#: and backfill divide by this number written out: a released migration never changes).
BLOCK = 1024
#: Offsets below this are cheaper to skip than to sum the blocks for.
MIN_OFFSET = 4 * BLOCK
#: ``EVERYONE``: the tally of every study (unrestricted listings), not of one collection.
EVERYONE = ""


def anchor_cte() -> str:
    """A ``WITH`` clause defining ``anchor(low, skip)``: the first study key of the block holding
    row ``offset`` of a listing, and how many rows of that block come before it. Its
    parameters, in order: the collection (``EVERYONE`` for all studies), the offset twice."""
    return (f"WITH tally AS (SELECT bucket, CAST(sum(n) AS BIGINT) AS n FROM study_tally WHERE collection=? "
            f"GROUP BY bucket), "
            f"anchor AS (SELECT bucket * {BLOCK} AS low, ? - before AS skip FROM "
            f"(SELECT bucket, n, CAST(sum(n) OVER (ORDER BY bucket) AS BIGINT) - n AS before FROM tally) t "
            f"WHERE before + n > ? ORDER BY bucket LIMIT 1) ")


def needs_compaction(db: Database, collection: str) -> bool:
    """Whether the collection's tally holds many more rows than blocks (appended since folded)."""
    rows, blocks = db.execute("SELECT count(*), count(DISTINCT bucket) FROM study_tally WHERE collection=?",
                              (collection,)).fetchone()
    return rows > 2 * blocks + 256


def compact(db: Database, collection: str) -> None:
    """Fold the collection's tally into one row per block. The rows deleted are exactly the rows
    summed (``DELETE ... RETURNING``); rows other nodes append meanwhile stay as they are."""
    with db.transaction() as session:
        sums: dict[int, int] = {}
        for bucket, n in session.execute("DELETE FROM study_tally WHERE collection=? RETURNING bucket, n",
                                         (collection,)).fetchall():
            sums[bucket] = sums.get(bucket, 0) + n
        session.executemany("INSERT INTO study_tally(collection, bucket, n) VALUES (?,?,?)",
                            [(collection, bucket, n) for bucket, n in sorted(sums.items()) if n])
