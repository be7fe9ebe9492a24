"""What reading the outbox in commit order costs: Catalog.outbox_after vs the plain seq read it replaced.

outbox_after first numbers the committed, unnumbered events (one UPDATE per batch, under a lock
all nodes share) so that a cursor never skips an event committed late; the plain read
(``seq > cursor``) could. Each round adds ``--events`` outbox rows in one transaction, then
reads them in batches of ``--batch`` both ways, interleaved so both see the same machine load;
reported: the median seconds of each, events/s and the ratio, per backend.

    python bench/outbox_bench.py [--events 20000] [--batch 500] [--rounds 3] [--backends sqlite postgresql]

PostgreSQL is Debian's server started in a temporary directory on loopback (tests/pg_cluster.py);
SQLite is a file beside it. Both are removed at the end.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

PLAIN = ("SELECT seq, event, study_uid, series_uid, sop_instance_uid FROM outbox "
         "WHERE seq > ? ORDER BY seq LIMIT ?")


def _add(catalog, n: int) -> int:
    """``n`` new events; returns the seq before them."""
    start = catalog.db.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0]
    with catalog.db.transaction() as s:
        s.executemany("INSERT INTO outbox(event, series_uid, created_at) VALUES ('stored', ?, ?)",
                      [(f"bench-{start + i}", time.time()) for i in range(n)])
    return start


def _plain(catalog, cursor: int, batch: int) -> int:
    read = 0
    while rows := catalog.db.execute(PLAIN, (cursor, batch)).fetchall():
        cursor, read = rows[-1][0], read + len(rows)
    return read


def _ordered(catalog, cursor: int, batch: int) -> tuple[int, int]:
    read = 0
    while events := catalog.outbox_after(cursor, batch):
        cursor, read = events[-1].seq, read + len(events)
    return cursor, read


def _timed(fn, *args):
    t = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - t, value


def run(location, events: int, batch: int, rounds: int) -> dict:
    from archive.catalog import Catalog

    catalog = Catalog(location)
    plain, ordered, cursor = [], [], 0
    try:
        for _ in range(rounds):
            start = _add(catalog, events)
            seconds, read = _timed(_plain, catalog, start, batch)
            assert read == events
            plain.append(seconds)
            seconds, (cursor, read) = _timed(_ordered, catalog, cursor, batch)
            assert read == events
            ordered.append(seconds)
    finally:
        catalog.close()
    p, o = statistics.median(plain), statistics.median(ordered)
    return {"plain_s": p, "ordered_s": o, "ordered_events_per_s": events / o, "ratio": o / p}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20000, help="events added and read per round")
    parser.add_argument("--batch", type=int, default=500, help="events per read (the index worker's batch_size)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    args = parser.parse_args()
    from pg_cluster import PgCluster

    with tempfile.TemporaryDirectory(prefix="outbox-bench-") as work:
        cluster = PgCluster().init().start() if "postgresql" in args.backends else None
        try:
            for backend in args.backends:
                location = Path(work) / "catalog.sqlite" if backend == "sqlite" else cluster.create_database()
                r = run(location, args.events, args.batch, args.rounds)
                print(f"{backend:10s} {args.events} events, batches of {args.batch}: plain seq read "
                      f"{r['plain_s']:.2f} s, commit-ordered read {r['ordered_s']:.2f} s "
                      f"({r['ordered_events_per_s']:.0f} events/s), {r['ratio']:.1f}x the plain read")
        finally:
            if cluster is not None:
                cluster.destroy()


if __name__ == "__main__":
    main()
