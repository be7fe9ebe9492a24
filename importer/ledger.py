"""Which vendor files were imported, by content, so a re-run skips them and a crash is undone.

Keyed by the SHA-256 of the file's bytes, never its name (scanner file names carry
accession numbers). Each instance stored for a file is recorded as it is stored, so a
file whose import was interrupted can have its partial instances removed before it is
converted again: an import is all of a file's instances or none.
"""
from __future__ import annotations

import time
from pathlib import Path

from archive.catalog.connections import Connections

_SCHEMA = """
CREATE TABLE IF NOT EXISTS import_file (
    fingerprint TEXT PRIMARY KEY, status TEXT NOT NULL, format TEXT, study_uid TEXT, series_uid TEXT,
    stored INTEGER, dropped INTEGER, updated REAL);
CREATE TABLE IF NOT EXISTS import_instance (
    fingerprint TEXT NOT NULL, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, sop_instance_uid TEXT NOT NULL,
    PRIMARY KEY (fingerprint, sop_instance_uid));
"""


class Ledger:
    def __init__(self, path: Path):
        self.db = Connections(path)
        self.db.get().executescript(_SCHEMA)

    def file(self, fingerprint: str) -> dict | None:
        row = self.db.get().execute("SELECT status, format, study_uid, series_uid, stored, dropped FROM import_file "
                                    "WHERE fingerprint=?", (fingerprint,)).fetchone()
        if row is None:
            return None
        return dict(zip(("status", "format", "study_uid", "series_uid", "stored", "dropped"), row))

    def instances(self, fingerprint: str) -> list[tuple[str, str, str]]:
        """(study, series, SOP instance UID) of what was stored for the file (as stored: de-identified)."""
        return self.db.get().execute("SELECT study_uid, series_uid, sop_instance_uid FROM import_instance "
                                     "WHERE fingerprint=?", (fingerprint,)).fetchall()

    def begin(self, fingerprint: str, format_name: str) -> None:
        with self.db.transaction() as db:
            db.execute("DELETE FROM import_instance WHERE fingerprint=?", (fingerprint,))
            db.execute("INSERT OR REPLACE INTO import_file(fingerprint, status, format, updated) "
                       "VALUES (?, 'pending', ?, ?)", (fingerprint, format_name, time.time()))

    def stored(self, fingerprint: str, study: str, series: str, sop: str) -> None:
        self.db.get().execute("INSERT OR IGNORE INTO import_instance VALUES (?, ?, ?, ?)",
                              (fingerprint, study, series, sop))

    def done(self, fingerprint: str, study: str | None, series: str | None, stored: int, dropped: int) -> None:
        self.db.get().execute("UPDATE import_file SET status='done', study_uid=?, series_uid=?, stored=?, dropped=?, "
                              "updated=? WHERE fingerprint=?", (study, series, stored, dropped, time.time(),
                                                                fingerprint))

    def forget(self, fingerprint: str) -> None:
        with self.db.transaction() as db:
            db.execute("DELETE FROM import_instance WHERE fingerprint=?", (fingerprint,))
            db.execute("DELETE FROM import_file WHERE fingerprint=?", (fingerprint,))
