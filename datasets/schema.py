"""The dataset tables, in the catalog's database.

Plain SQL that SQLite and PostgreSQL both run: TEXT / INTEGER / BIGINT columns,
ISO-8601 UTC text for times, JSON as TEXT, natural keys (no AUTOINCREMENT, no
SQLite-only clauses). One statement per string so a migration tool can run them.
"""
from __future__ import annotations

import threading
from datetime import datetime, timezone

STATEMENTS: tuple[str, ...] = (
    # A curated set of series: fields a landing page shows, and how its series are chosen.
    """CREATE TABLE IF NOT EXISTS dataset (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        license TEXT NOT NULL,
        terms_of_use TEXT NOT NULL,
        contributors TEXT NOT NULL,
        keywords TEXT NOT NULL,
        search TEXT,
        collection TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        created_by TEXT NOT NULL
    )""",
    # Series named by hand: included = 1 added, 0 taken out of what the search or collection chose.
    """CREATE TABLE IF NOT EXISTS dataset_series (
        dataset_id TEXT NOT NULL REFERENCES dataset(id),
        series_uid TEXT NOT NULL,
        included INTEGER NOT NULL,
        PRIMARY KEY (dataset_id, series_uid)
    )""",
    # Per-case clinical fields the curator supplies, keyed by the stored Patient ID (a pseudonym).
    """CREATE TABLE IF NOT EXISTS dataset_case (
        dataset_id TEXT NOT NULL REFERENCES dataset(id),
        patient_id TEXT NOT NULL,
        diagnosis TEXT,
        age_band TEXT,
        sex TEXT,
        anatomic_site TEXT,
        PRIMARY KEY (dataset_id, patient_id)
    )""",
    # A frozen version: what the dataset said and held when it was released.
    """CREATE TABLE IF NOT EXISTS dataset_release (
        id TEXT PRIMARY KEY,
        dataset_id TEXT NOT NULL REFERENCES dataset(id),
        version INTEGER NOT NULL,
        identifier TEXT NOT NULL UNIQUE,
        collection TEXT NOT NULL,
        released_at TEXT NOT NULL,
        released_by TEXT NOT NULL,
        metadata TEXT NOT NULL,
        counts TEXT NOT NULL,
        manifest_sha256 TEXT NOT NULL,
        withdrawn_at TEXT,
        withdrawn_reason TEXT,
        UNIQUE (dataset_id, version)
    )""",
    # The cases of a release under release-local pseudonyms, with their clinical fields.
    """CREATE TABLE IF NOT EXISTS release_case (
        release_id TEXT NOT NULL REFERENCES dataset_release(id),
        case_id TEXT NOT NULL,
        diagnosis TEXT,
        age_band TEXT,
        sex TEXT,
        anatomic_site TEXT,
        species TEXT,
        PRIMARY KEY (release_id, case_id)
    )""",
    # The manifest: every instance of the release; withdrawn_* are the only columns ever updated.
    """CREATE TABLE IF NOT EXISTS release_item (
        release_id TEXT NOT NULL REFERENCES dataset_release(id),
        sop_instance_uid TEXT NOT NULL,
        study_uid TEXT NOT NULL,
        series_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        case_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        size BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        withdrawn_at TEXT,
        withdrawn_reason TEXT,
        PRIMARY KEY (release_id, sop_instance_uid)
    )""",
    # An application for access to a release (datasets.access): pending, then approved or rejected; revocable.
    """CREATE TABLE IF NOT EXISTS dataset_application (
        id TEXT PRIMARY KEY,
        release_id TEXT NOT NULL REFERENCES dataset_release(id),
        applicant TEXT NOT NULL,
        project TEXT NOT NULL,
        purpose TEXT NOT NULL,
        members TEXT NOT NULL,
        status TEXT NOT NULL,
        submitted_at TEXT NOT NULL,
        decided_by TEXT,
        decided_at TEXT,
        reason TEXT,
        expires_at TEXT,
        revoked_by TEXT,
        revoked_at TEXT,
        revoke_reason TEXT
    )""",
    # What an approval grants: read on the release's collection, per member, until expires_at (or revoked_at).
    """CREATE TABLE IF NOT EXISTS dataset_grant (
        application_id TEXT NOT NULL REFERENCES dataset_application(id),
        subject TEXT NOT NULL,
        release_id TEXT NOT NULL REFERENCES dataset_release(id),
        collection TEXT NOT NULL,
        granted_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        revoked_at TEXT,
        PRIMARY KEY (application_id, subject)
    )""",
    "CREATE INDEX IF NOT EXISTS dataset_grant_subject ON dataset_grant(subject, expires_at)",
    "CREATE INDEX IF NOT EXISTS dataset_application_release ON dataset_application(release_id, status)",
    # CRC-32 of downloadable content by its SHA-256 (a zip download needs them; datasets.download).
    """CREATE TABLE IF NOT EXISTS bundle_crc (
        sha256 TEXT PRIMARY KEY,
        crc32 BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS release_item_sop ON release_item(sop_instance_uid)",
    "CREATE INDEX IF NOT EXISTS release_item_series ON release_item(release_id, series_uid)",
    "CREATE INDEX IF NOT EXISTS dataset_release_dataset ON dataset_release(dataset_id, version)",
)

_ensured: set[str] = set()
_lock = threading.Lock()


def ensure(catalog) -> None:
    """Create the tables once per catalog and process (idempotent)."""
    key = str(catalog.path or catalog.db.location)
    if key in _ensured:
        return
    with _lock:
        if key in _ensured:
            return
        with catalog.transaction() as db:
            for statement in STATEMENTS:
                db.execute(statement)
        _ensured.add(key)


def reader(catalog):
    """A connection for reads (the catalog's per-thread connection), tables ensured."""
    ensure(catalog)
    return catalog._db()


def now() -> str:
    """UTC now as ISO 8601 with seconds, the one time format of these tables."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
