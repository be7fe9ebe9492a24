"""The indexer's own bookkeeping, in its own SQLite file (never in the catalog's schema).

- ``index_cursor``: the last outbox seq applied, per index (alias) name.
- ``failed``: series whose document the index rejected, retried with back-off
  and after every restart (a fixed mapping or builder picks them up).
- ``ai_refs``: which AI series (ANN/SEG) reference which slide series, so a
  slide's AI summary is rebuilt when an annotation arrives or goes away.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Iterable

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
    def __init__(self, path: Path):
        self.path = Path(path)
        self._connections = Connections(self.path)
        self._db().executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        return self._connections.get()

    def close(self) -> None:
        self._connections.close()

    # --- cursor -----------------------------------------------------------------

    def cursor(self, name: str) -> int:
        row = self._db().execute("SELECT seq FROM index_cursor WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def set_cursor(self, name: str, seq: int) -> None:
        self._db().execute("INSERT INTO index_cursor(name, seq) VALUES (?, ?) "
                           "ON CONFLICT(name) DO UPDATE SET seq=excluded.seq", (name, seq))

    def rewind_cursor(self, name: str, seq: int) -> None:
        """Move the cursor back to ``seq`` if it is past it (events after it are applied again)."""
        self._db().execute("INSERT INTO index_cursor(name, seq) VALUES (?, ?) "
                           "ON CONFLICT(name) DO UPDATE SET seq=min(seq, excluded.seq)", (name, seq))

    # --- failures -----------------------------------------------------------------

    def record_failure(self, series_uid: str, reason: str) -> None:
        self._db().execute(
            "INSERT INTO failed(series_uid, reason, attempts, last_failed) VALUES (?,?,1,?) "
            "ON CONFLICT(series_uid) DO UPDATE SET reason=excluded.reason, attempts=attempts+1, "
            "last_failed=excluded.last_failed", (series_uid, reason[:500], time.time()))

    def clear_failures(self, series_uids: Iterable[str]) -> None:
        self._db().executemany("DELETE FROM failed WHERE series_uid=?", [(u,) for u in series_uids])

    def failures(self) -> dict[str, str]:
        return dict(self._db().execute("SELECT series_uid, reason FROM failed ORDER BY series_uid"))

    def failures_due(self, now: float | None = None, everything: bool = False, limit: int = 500) -> list[str]:
        """Failed series whose back-off (30 s doubling per attempt, at most an hour) has passed."""
        now = time.time() if now is None else now
        rows = self._db().execute("SELECT series_uid, attempts, last_failed FROM failed ORDER BY last_failed")
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
        db = self._db()
        old = {r[0] for r in db.execute("SELECT slide_series FROM ai_refs WHERE ai_series=?", (ai_series,))}
        db.execute("DELETE FROM ai_refs WHERE ai_series=?", (ai_series,))
        db.executemany("INSERT OR IGNORE INTO ai_refs(ai_series, slide_series) VALUES (?,?)",
                       [(ai_series, s) for s in slides])
        return old

    def ai_for_slide(self, slide_series: str) -> list[str]:
        return [r[0] for r in self._db().execute(
            "SELECT ai_series FROM ai_refs WHERE slide_series=? ORDER BY ai_series", (slide_series,))]
