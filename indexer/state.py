"""The indexer's own bookkeeping, in its own SQLite file, or, for the nodes sharing one
catalog and one index, partly in the catalog (``open_state``).

- ``index_cursor``: the last outbox seq applied, per index (alias) name (in the file;
  nodes sharing the outbox keep it in the catalog's lease ``index:<name>`` instead, which
  ``cursor`` and ``rewind_cursor`` then read and move).
- ``failed``: series whose document the index rejected, retried with back-off
  and after every restart (a fixed mapping or builder picks them up).
- ``ai_refs``: which AI series (ANN/SEG) reference which slide series, so a
  slide's AI summary is rebuilt when an annotation arrives or goes away.

Shared, the last two are the catalog's ``index_failed`` and ``index_ai_ref`` tables
(archive/catalog/schema.py): the node that takes over the outbox lease from a dead one
retries what that node saw rejected and knows which annotations each slide has.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from archive.catalog.connections import Connections

SCHEMA = """
CREATE TABLE IF NOT EXISTS index_cursor (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS failed (series_uid TEXT PRIMARY KEY, reason TEXT NOT NULL,
    attempts INTEGER NOT NULL, last_failed REAL NOT NULL);
CREATE TABLE IF NOT EXISTS ai_refs (ai_series TEXT NOT NULL, slide_series TEXT NOT NULL,
    PRIMARY KEY (ai_series, slide_series));
CREATE INDEX IF NOT EXISTS ai_refs_slide ON ai_refs(slide_series);
"""


class IndexState:
    def __init__(self, path: Path, shared: Any = None):
        """``path``: this node's file; ``shared``: the catalog's Database, when failures and AI
        references are shared by the nodes applying one outbox to one index."""
        self.path = Path(path)
        self._connections = Connections(self.path)
        self._db().executescript(SCHEMA)
        self._shared = shared
        self._failed, self._refs = ("index_failed", "index_ai_ref") if shared is not None else ("failed", "ai_refs")

    def _db(self) -> sqlite3.Connection:
        return self._connections.get()

    def _tables(self):
        """Where failures and AI references are kept: the shared catalog or this node's file."""
        return self._shared if self._shared is not None else self._db()

    def _transaction(self):
        if self._shared is not None:
            return self._shared.transaction()
        return self._connections.transaction()

    @property
    def shared(self) -> bool:
        return self._shared is not None

    def close(self) -> None:
        self._connections.close()

    # --- cursor -----------------------------------------------------------------

    def cursor(self, name: str) -> int:
        """The last outbox seq applied to index ``name``: shared, the one the outbox lease holds."""
        shared = self.shared_cursor(name)
        if shared is not None:
            return shared
        row = self._db().execute("SELECT seq FROM index_cursor WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def shared_cursor(self, name: str) -> int | None:
        """The cursor kept in the outbox lease ``index:<name>`` (indexer/worker.py); None if none."""
        if self._shared is None:
            return None
        row = self._shared.execute("SELECT state FROM lease WHERE name=?", (lease_name(name),)).fetchone()
        state = json.loads(row[0]) if row and row[0] else None
        return int(state["seq"]) if state and "seq" in state else None

    def set_cursor(self, name: str, seq: int) -> None:
        self._db().execute("INSERT INTO index_cursor(name, seq) VALUES (?, ?) "
                           "ON CONFLICT(name) DO UPDATE SET seq=excluded.seq", (name, seq))

    def rewind_cursor(self, name: str, seq: int) -> None:
        """Move the cursor back to ``seq`` if it is past it (events after it are applied again);
        shared, the lease's too (its holder's next save of a later seq then fails: worker.py)."""
        self._db().execute("INSERT INTO index_cursor(name, seq) VALUES (?, ?) "
                           "ON CONFLICT(name) DO UPDATE SET seq=min(seq, excluded.seq)", (name, seq))
        if self._shared is None:
            return
        with self._shared.transaction() as db:
            row = db.execute(f"SELECT state FROM lease WHERE name=?{self._shared.dialect.lock_rows}",
                             (lease_name(name),)).fetchone()
            state = json.loads(row[0]) if row and row[0] else None
            if state and int(state.get("seq", 0)) > seq:
                db.execute("UPDATE lease SET state=? WHERE name=?", (json.dumps(dict(state, seq=seq)), lease_name(name)))

    # --- failures -----------------------------------------------------------------

    def record_failure(self, series_uid: str, reason: str) -> None:
        self._tables().execute(
            f"INSERT INTO {self._failed}(series_uid, reason, attempts, last_failed) VALUES (?,?,1,?) "
            f"ON CONFLICT(series_uid) DO UPDATE SET reason=excluded.reason, attempts={self._failed}.attempts+1, "
            "last_failed=excluded.last_failed", (series_uid, reason[:500], time.time()))

    def clear_failures(self, series_uids: Iterable[str]) -> None:
        rows = [(u,) for u in series_uids]
        if rows:
            with self._transaction() as db:
                db.executemany(f"DELETE FROM {self._failed} WHERE series_uid=?", rows)

    def failures(self) -> dict[str, str]:
        return {r[0]: r[1] for r in self._tables().execute(
            f"SELECT series_uid, reason FROM {self._failed} ORDER BY series_uid")}

    def failures_due(self, now: float | None = None, everything: bool = False, limit: int = 500) -> list[str]:
        """Failed series whose back-off (30 s doubling per attempt, at most an hour) has passed."""
        now = time.time() if now is None else now
        rows = self._tables().execute(f"SELECT series_uid, attempts, last_failed FROM {self._failed} "
                                      "ORDER BY last_failed").fetchall()
        out = []
        for uid, attempts, last in rows:
            if everything or now - last >= min(3600.0, 30.0 * 2 ** (attempts - 1)):
                out.append(uid)
            if len(out) >= limit:
                break
        return out

    # --- AI references --------------------------------------------------------------

    def set_ai_refs(self, ai_series: str, slides: Iterable[str]) -> set[str]:
        """Replace what ``ai_series`` references; returns the slides it referenced before."""
        with self._transaction() as db:
            old = {r[0] for r in db.execute(f"SELECT slide_series FROM {self._refs} WHERE ai_series=?",
                                            (ai_series,)).fetchall()}
            db.execute(f"DELETE FROM {self._refs} WHERE ai_series=?", (ai_series,))
            rows = [(ai_series, s) for s in slides]
            if rows:
                db.executemany(f"INSERT INTO {self._refs}(ai_series, slide_series) VALUES (?,?) "
                               "ON CONFLICT DO NOTHING", rows)
        return old

    def ai_for_slide(self, slide_series: str) -> list[str]:
        return [r[0] for r in self._tables().execute(
            f"SELECT ai_series FROM {self._refs} WHERE slide_series=? ORDER BY ai_series", (slide_series,))]


def lease_name(index_name: str) -> str:
    """The catalog lease of the nodes applying the outbox to one shared index."""
    return f"index:{index_name}"


def open_state(config: Any, catalog: Any, index: Any) -> IndexState:
    """The state of ``config``'s index: failures and AI references in the catalog when the
    catalog and the index are both shared by several nodes, else all in this node's file."""
    shared = catalog.db if getattr(catalog, "shared", False) and getattr(index, "shared", False) else None
    return IndexState(config.path, shared)
