"""The embedded index: SQLite with FTS5, nothing to run.

Per generation ``g``: ``docs_g`` (the document JSON and its free text),
``vals_g`` (one row per field value, for filters, facets, sorting and QIDO) and
``fts_g`` (FTS5 over ``docs_g.text``). ``meta.current`` names the generation
searches use; a rebuild fills a new generation and swaps that one row, which
is the embedded counterpart of an Elasticsearch alias swap.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from archive.catalog.connections import Connections

from . import qido
from .base import IndexUnavailable
from .documents import FIELD_BY_NAME, DocumentError, check, flatten, free_text
from .search import SearchRequest, SearchResult, public_hit

_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def _schema(g: str, deferred: bool = False) -> str:
    """Tables of generation ``g``; ``deferred`` leaves the big filter index for after a bulk load."""
    return f"""
CREATE TABLE IF NOT EXISTS docs_{g} (rowid INTEGER PRIMARY KEY, series_uid TEXT NOT NULL UNIQUE,
    study_uid TEXT NOT NULL, body TEXT NOT NULL, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vals_{g} (doc INTEGER NOT NULL, field TEXT NOT NULL, value);
CREATE INDEX IF NOT EXISTS vals_{g}_doc ON vals_{g}(doc, field, value);
CREATE VIRTUAL TABLE IF NOT EXISTS fts_{g} USING fts5(text, content='docs_{g}', content_rowid='rowid',
    tokenize='unicode61 remove_diacritics 2');
""" + ("" if deferred else _filter_indexes(g))


def _filter_indexes(g: str) -> str:
    return f"""
CREATE INDEX IF NOT EXISTS vals_{g}_fv ON vals_{g}(field, value, doc);
CREATE INDEX IF NOT EXISTS docs_{g}_study ON docs_{g}(study_uid);
"""


def _sql_value(field: str, value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    return value


def _json_value(field: str, value: Any) -> Any:
    kind = FIELD_BY_NAME[field].type
    if kind == "boolean":
        return bool(value)
    if kind == "float":
        return float(value)
    return value


class _Generation:
    """Writes into one generation's tables."""

    def __init__(self, index: "EmbeddedIndex", g: str):
        self.index, self.g = index, g

    def upsert(self, docs: list[dict[str, Any]]) -> list[DocumentError]:
        rejected: list[DocumentError] = []
        g = self.g
        with self.index._write() as db:
            for doc in docs:
                try:
                    check(doc)
                except DocumentError as e:
                    rejected.append(e)
                    continue
                self._remove(db, doc["series_uid"])
                text = free_text(doc)
                cur = db.execute(f"INSERT INTO docs_{g}(series_uid, study_uid, body, text) VALUES (?,?,?,?)",
                                 (doc["series_uid"], doc.get("study_uid", ""),
                                  json.dumps(doc, separators=(",", ":")), text))
                rowid = cur.lastrowid
                db.execute(f"INSERT INTO fts_{g}(rowid, text) VALUES (?,?)", (rowid, text))
                rows = []
                for field, value in flatten(doc).items():
                    if field == "mapping_version" or FIELD_BY_NAME[field].type == "text":
                        continue
                    for v in value if isinstance(value, list) else [value]:
                        rows.append((rowid, field, _sql_value(field, v)))
                db.executemany(f"INSERT INTO vals_{g}(doc, field, value) VALUES (?,?,?)", rows)
        return rejected

    def _remove(self, db: sqlite3.Connection, series_uid: str) -> None:
        g = self.g
        row = db.execute(f"SELECT rowid, text FROM docs_{g} WHERE series_uid=?", (series_uid,)).fetchone()
        if row is None:
            return
        db.execute(f"INSERT INTO fts_{g}(fts_{g}, rowid, text) VALUES ('delete', ?, ?)", (row[0], row[1]))
        db.execute(f"DELETE FROM vals_{g} WHERE doc=?", (row[0],))
        db.execute(f"DELETE FROM docs_{g} WHERE rowid=?", (row[0],))

    def delete(self, series_uids: list[str]) -> None:
        with self.index._write() as db:
            for uid in series_uids:
                self._remove(db, uid)

    def commit(self) -> None:
        self.index._db().executescript(_filter_indexes(self.g))  # built once, after the bulk load
        with self.index._write() as db:
            old = self.index._current(db)
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('current', ?)", (self.g,))
            if old and old != self.g:
                self.index._drop(db, old)

    def abort(self) -> None:
        with self.index._write() as db:
            if self.index._current(db) != self.g:
                self.index._drop(db, self.g)


class EmbeddedIndex:
    """SQLite FTS5 backend; one file, safe for several threads (one connection each)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.name = f"embedded:{self.path}"
        self._connections = Connections(self.path, ("synchronous=NORMAL",))
        self._lock = threading.Lock()
        db = self._db()
        db.execute(_META)

    # --- plumbing -----------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        return self._connections.get()

    def _write(self):
        return self._connections.transaction()

    @staticmethod
    def _current(db: sqlite3.Connection) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key='current'").fetchone()
        return row[0] if row else None

    def _gen(self) -> str:
        g = self._current(self._db())
        if g is None:
            self.ensure()
            g = self._current(self._db())
        return g  # type: ignore[return-value]

    @staticmethod
    def _drop(db: sqlite3.Connection, g: str) -> None:
        for stmt in (f"DROP TABLE IF EXISTS fts_{g}", f"DROP TABLE IF EXISTS vals_{g}",
                     f"DROP TABLE IF EXISTS docs_{g}"):
            db.execute(stmt)

    def _new_generation(self, deferred: bool = False) -> str:
        g = f"g{time.time_ns()}"
        self._db().executescript(_schema(g, deferred))
        return g

    # --- Index protocol ---------------------------------------------------------------

    def ensure(self) -> None:
        with self._lock:
            if self._current(self._db()) is not None:
                return
            g = self._new_generation()
            with self._write() as db:
                if self._current(db) is None:
                    db.execute("INSERT INTO meta(key, value) VALUES ('current', ?)", (g,))

    def upsert(self, docs: list[dict[str, Any]]) -> list[DocumentError]:
        return _Generation(self, self._gen()).upsert(docs)

    def delete(self, series_uids: list[str]) -> None:
        _Generation(self, self._gen()).delete(series_uids)

    def get(self, series_uid: str) -> dict[str, Any] | None:
        row = self._db().execute(f"SELECT body FROM docs_{self._gen()} WHERE series_uid=?", (series_uid,)).fetchone()
        return json.loads(row[0]) if row else None

    def count(self) -> int:
        return self._db().execute(f"SELECT count(*) FROM docs_{self._gen()}").fetchone()[0]

    def refresh(self) -> None:
        pass  # SQLite writes are visible on commit

    def begin_rebuild(self) -> _Generation:
        self.ensure()
        return _Generation(self, self._new_generation(deferred=True))

    def close(self) -> None:
        self._connections.close()

    # --- search -----------------------------------------------------------------------------

    def _where(self, g: str, request: SearchRequest) -> tuple[str, list[Any]]:
        """WHERE over ``docs d``: the first condition drives (an IN set), the rest are per-row checks.

        Free text drives when present (FTS is the most selective), then the first filter;
        the default ``kind = slide`` never drives, since nearly every document passes it.
        """
        parts: list[tuple[str, list[Any]]] = []  # (condition on the values table "v", params)
        if request.text:
            fts = (f"d.rowid IN (SELECT rowid FROM fts_{g} WHERE fts_{g} MATCH ?)",
                   [" AND ".join('"' + t.replace('"', '""') + '"' for t in request.text)])
        else:
            fts = None
        for field, values in request.terms:
            parts.append((f"v.field = ? AND v.value IN ({','.join('?' * len(values))})",
                          [field, *(_sql_value(field, v) for v in values)]))
        for field, rng in request.ranges:
            sub, sp = ["v.field = ?"], [field]
            if rng.gte is not None:
                sub.append("v.value >= ?")
                sp.append(rng.gte)
            if rng.lte is not None:
                sub.append("v.value <= ?")
                sp.append(rng.lte)
            parts.append((" AND ".join(sub), sp))
        if request.collections is not None:  # access control: only the caller's collections exist
            names = sorted(request.collections)
            parts.insert(0, (f"v.field = 'collections' AND v.value IN ({','.join('?' * len(names))})", names)
                         if names else ("0", []))
        if not request.include_all_kinds and "kind" not in dict(request.terms):
            parts.append(("v.field = 'kind' AND v.value = 'slide'", []))
        conds, params = [], []
        if fts:
            conds.append(fts[0])
            params += fts[1]
        for i, (cond, p) in enumerate(parts):
            if i == 0 and not fts and not cond.startswith("v.field = 'kind'"):
                conds.append(f"d.rowid IN (SELECT v.doc FROM vals_{g} v WHERE {cond})")
            else:
                conds.append(f"EXISTS (SELECT 1 FROM vals_{g} v WHERE v.doc = d.rowid AND {cond})")
            params += p
        return (" WHERE " + " AND ".join(conds)) if conds else "", params

    def search(self, request: SearchRequest) -> SearchResult:
        self._gen()  # creates the first generation if needed (a write, so outside the snapshot)
        db = self._db()
        for attempt in range(3):
            try:
                # One read transaction: a WAL snapshot in which the generation named by meta
                # exists throughout, even if a rebuild swaps and drops it meanwhile.
                db.execute("BEGIN")
                try:
                    return self._search(request)
                finally:
                    db.execute("COMMIT")
            except sqlite3.OperationalError as e:
                if attempt < 2 and ("no such table" in str(e) or "locked" in str(e)):
                    continue
                if "locked" in str(e) or "no such table" in str(e):
                    raise IndexUnavailable(f"embedded index busy: {e}") from None
                raise
        raise AssertionError("unreachable")

    def _search(self, request: SearchRequest) -> SearchResult:
        db = self._db()
        g = self._gen()
        where, params = self._where(g, request)
        # The filtered set is computed once into a per-connection temp table; count, hits and
        # every facet then read from it (facets through the (doc, field, value) index).
        db.execute("CREATE TEMP TABLE IF NOT EXISTS matched (rowid INTEGER PRIMARY KEY)")
        db.execute("DELETE FROM temp.matched")
        total = db.execute(f"INSERT INTO temp.matched SELECT d.rowid FROM docs_{g} d{where}", params).rowcount
        hits: list[dict[str, Any]] = []
        if request.size and total:
            joins, order, jparams = "", [], []
            for i, (field, desc) in enumerate(request.sort):
                joins += f" LEFT JOIN vals_{g} s{i} ON s{i}.doc = d.rowid AND s{i}.field = ?"
                jparams.append(field)
                order.append(f"(s{i}.value IS NULL), s{i}.value {'DESC' if desc else 'ASC'}")
            if not request.sort and request.text:
                # bm25 is only defined inside an FTS query: rank the matched rows through one
                joins += (f" JOIN (SELECT f.rowid AS r, bm25(fts_{g}) AS score FROM fts_{g} f "
                          f"JOIN temp.matched mm ON mm.rowid = f.rowid WHERE fts_{g} MATCH ?) f ON f.r = d.rowid")
                jparams.append(" AND ".join('"' + t.replace('"', '""') + '"' for t in request.text))
                order.append("f.score ASC")
            order.append("d.series_uid ASC")
            sql = (f"SELECT d.body FROM temp.matched m CROSS JOIN docs_{g} d ON d.rowid = m.rowid{joins} "
                   f"ORDER BY {', '.join(order)} LIMIT ? OFFSET ?")
            rows = db.execute(sql, jparams + [request.size, request.offset]).fetchall()
            hits = [public_hit(json.loads(r[0])) for r in rows]
        facets: dict[str, list[dict[str, Any]]] = {}
        for field in request.facets:
            sql = (f"SELECT v.value, count(*) AS n FROM temp.matched m CROSS JOIN vals_{g} v "
                   f"ON v.doc = m.rowid AND v.field = ? GROUP BY v.value ORDER BY n DESC, v.value ASC LIMIT ?")
            facets[field] = [{"value": _json_value(field, v), "count": n}
                             for v, n in db.execute(sql, [field, request.facet_size])] if total else []
        db.execute("DELETE FROM temp.matched")
        return SearchResult(total=total, hits=hits, facets=facets)

    # --- QIDO ----------------------------------------------------------------------------------

    def qido_uids(self, level: str, matches: Iterable[Any], fuzzy: bool, cap: int) -> list[str]:
        from .base import Unanswerable

        matches = list(matches)
        qido.check(level, matches)
        g = self._gen()
        conds, params = [], []
        for m in matches:
            sql, p = qido.sql_clause(m, fuzzy, f"vals_{g}")
            conds.append(sql)
            params += p
        column = "study_uid" if level == "study" else "series_uid"
        where = (" WHERE " + " AND ".join(conds)) if conds else ""
        rows = self._db().execute(f"SELECT DISTINCT d.{column} FROM docs_{g} d{where} ORDER BY 1 LIMIT ?",
                                  params + [cap + 1]).fetchall()
        if len(rows) > cap:
            raise Unanswerable(f"more than {cap} matches: too broad for the index path")
        return [r[0] for r in rows]
